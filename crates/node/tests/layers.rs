//! The node's modules point one way (ARCHITECTURE.md, "Layers"). This test reads every
//! source file of `crates/node/src`, finds which top-level modules each one names
//! (`crate::x`, and `use crate::{x, y::z}` groups), and fails on:
//! - a circle among modules (the crate root, which composes everything, is left out);
//! - an edge upwards: from a lower layer to a higher one;
//! - any edge between the two presentations, the HTTP API and the console.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Layers, highest first. A module may use modules of lower layers, and of its own layer
/// only where the layer says so. A module not listed is in the lowest layer.
const LAYERS: &[(&[&str], bool)] = &[
    // The HTTP server: the only module that knows both presentations.
    (&["http"], false),
    // The presentations: JSON for the command line and integrations, HTML for operators.
    // They never use each other.
    (&["api", "console"], false),
    // The service both presentations call: queries, commands, who is calling, counters.
    (&["service", "operators", "metrics", "idempotency"], true),
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|(members, _)| members.contains(&module))
        .unwrap_or(LAYERS.len())
}

fn same_layer_allowed(layer: usize) -> bool {
    LAYERS.get(layer).is_none_or(|(_, allowed)| *allowed)
}

/// The top-level modules of the crate: files and directories of `src` but `lib.rs`.
fn modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("src is readable")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            match name.strip_suffix(".rs") {
                Some("lib") => None,
                Some(module) => Some(module.to_string()),
                None if e.path().is_dir() => Some(name),
                None => None,
            }
        })
        .collect()
}

/// Source text without line comments (doc links to other modules are not uses).
fn code(text: &str) -> String {
    text.lines()
        .map(|line| match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every top-level module named after `crate::` in `text`, including inside `{…}` groups.
fn named(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's first-level names: split at commas outside nested braces.
            let mut depth = 0;
            let mut start = 0;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        first_name(&group[start..j], modules, &mut out);
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        first_name(&group[start..j], modules, &mut out);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
        } else {
            first_name(rest, modules, &mut out);
        }
    }
    out
}

fn first_name(path: &str, modules: &BTreeSet<String>, out: &mut BTreeSet<String>) {
    let name: String = path
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if modules.contains(&name) {
        out.insert(name);
    }
}

fn edges(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let modules = modules(src);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .expect("readable")
            .filter_map(|e| e.ok())
        {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).expect("under src");
            let top = rel.components().next().expect("a component");
            let top = top.as_os_str().to_string_lossy();
            let module = top.strip_suffix(".rs").unwrap_or(&top).to_string();
            if module == "lib" {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("readable");
            let to = named(&code(&text), &modules);
            let from = edges.entry(module.clone()).or_default();
            from.extend(to.into_iter().filter(|m| *m != module));
        }
    }
    edges
}

/// A circle through `start`, if there is one (depth-first).
fn circle(edges: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut stack = vec![(start.to_string(), vec![start.to_string()])];
    let mut seen = BTreeSet::new();
    while let Some((at, path)) = stack.pop() {
        for next in edges.get(&at).into_iter().flatten() {
            if next == start {
                let mut found = path.clone();
                found.push(start.to_string());
                return Some(found);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

fn node_edges() -> BTreeMap<String, BTreeSet<String>> {
    edges(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
}

#[test]
fn modules_form_no_circle() {
    let edges = node_edges();
    assert!(edges.contains_key("api") && edges.contains_key("console"));
    let circles: Vec<String> = edges
        .keys()
        .filter_map(|m| circle(&edges, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(
        circles.is_empty(),
        "module circles:\n{}",
        circles.join("\n")
    );
}

#[test]
fn layers_point_down_and_presentations_stay_apart() {
    let edges = node_edges();
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        for to in tos {
            let (a, b) = (layer(from), layer(to));
            if a > b || (a == b && !same_layer_allowed(a)) {
                wrong.push(format!("{from} -> {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "uses against the layers (see ARCHITECTURE.md): {wrong:?}"
    );
}

#[test]
fn the_reader_finds_grouped_and_nested_uses() {
    let modules: BTreeSet<String> = ["api", "console", "service", "writer"]
        .map(String::from)
        .into();
    let text =
        "use crate::{service::{self, Error}, writer::Sent, now_ms};\nfn f() { crate::api::x(); }";
    let found = named(&code(text), &modules);
    assert_eq!(found, ["api", "service", "writer"].map(String::from).into());
    let commented = "// crate::console::x\nlet s = \"a // b\"; crate::writer::y();";
    assert_eq!(
        named(&code(commented), &modules),
        ["writer"].map(String::from).into()
    );
}
