//! Every Markdown link in README.md, ARCHITECTURE.md and docs/ resolves inside the
//! repository: a relative link names a file or directory that exists, and a `#anchor` names a
//! heading of the file it points into (GitHub's heading ids). A fresh clone has nothing
//! beside the repository, so a link out of it (`../shared/...`) fails too. Links to
//! `http(s)://` and `mailto:` are not followed: the test uses no network.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the repository root exists")
}

/// The Markdown files the test covers.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    let mut stack = vec![root.join("docs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("docs/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The text outside fenced code blocks and inline code spans, line by line: links inside
/// code are examples, not links.
fn prose_lines(text: &str) -> Vec<String> {
    let mut in_fence = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence || line.starts_with("    ") {
            continue;
        }
        let mut kept = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                kept.push_str(part);
            }
        }
        out.push(kept);
    }
    out
}

/// The targets of inline links and images, `[text](target)` and `![alt](target)`, and of
/// reference definitions, `[name]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    for line in prose_lines(text) {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            if let Some(end) = trimmed.find("]: ") {
                targets.push(
                    trimmed[end + 3..]
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .into(),
                );
                continue;
            }
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.trim_matches(['<', '>']).to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// GitHub's id for a heading: lower case, punctuation other than `-` and `_` dropped, each
/// space a `-`; a repeated id gets `-1`, `-2`, ….
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let base: String = title
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let mut id = base.clone();
        let mut n = 0;
        while seen.contains(&id) {
            n += 1;
            id = format!("{base}-{n}");
        }
        seen.insert(id);
    }
    seen
}

/// What is wrong with one link from `file`, if anything.
fn check(root: &Path, file: &Path, target: &str) -> Option<String> {
    if target.is_empty() {
        return Some("an empty link".into());
    }
    if ["http://", "https://", "mailto:"]
        .iter()
        .any(|p| target.starts_with(p))
    {
        return None;
    }
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let resolved = if path.is_empty() {
        file.to_path_buf()
    } else {
        let joined = file.parent().expect("a file has a directory").join(path);
        match joined.canonicalize() {
            Ok(p) => p,
            Err(_) => return Some(format!("{path} does not exist")),
        }
    };
    if !resolved.starts_with(root) {
        return Some(format!("{path} is outside the repository"));
    }
    if let Some(anchor) = anchor {
        let text = std::fs::read_to_string(&resolved).ok()?;
        if !anchors(&text).contains(anchor) {
            return Some(format!("no heading #{anchor} in {}", resolved.display()));
        }
    }
    None
}

#[test]
fn every_link_in_the_documents_resolves_inside_the_repository() {
    let root = repo_root();
    let mut broken = Vec::new();
    let mut links = 0;
    for file in documents(&root) {
        let text = std::fs::read_to_string(&file).expect("a document is readable");
        for target in link_targets(&text) {
            links += 1;
            if let Some(what) = check(&root, &file, &target) {
                broken.push(format!("{}: ({target}): {what}", file.display()));
            }
        }
    }
    assert!(
        links > 20,
        "found only {links} links: the extractor is broken"
    );
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_checker_catches_what_it_must() {
    let root = repo_root();
    let readme = root.join("README.md");
    assert_eq!(check(&root, &readme, "docs/spec.md"), None);
    assert_eq!(check(&root, &readme, "docs/spec.md#2-words"), None);
    assert!(check(&root, &readme, "../shared/SPEC.md").is_some());
    assert!(check(&root, &readme, "docs/nothing-here.md").is_some());
    assert!(check(&root, &readme, "docs/spec.md#no-such-heading").is_some());
    assert_eq!(
        link_targets("see [a](x.md#y) and ![b](<img.png>), not `[c](z.md)`\n[d]: w.md\n"),
        ["x.md#y", "img.png", "w.md"]
    );
    let ids = anchors("# A title\n## 13. Differences from SPEC\n# A title\n");
    assert!(ids.contains("13-differences-from-spec"));
    assert!(ids.contains("a-title-1"));
}
