//! The monitoring files in `ops/` fit the node: every `detente_*` family the Grafana
//! dashboard and the Prometheus rules use is one that `crates/node/src/metrics.rs` serves and
//! `docs/deadlines.md` documents, and every dashboard query is valid PromQL (checked by
//! `promtool`, as recording rules). The alerting rules themselves are checked and unit-tested
//! by `promtool check rules` / `promtool test rules` in `scripts/test`.
//!
//! Without `promtool` (Debian's `prometheus` package) the PromQL check fails, unless
//! `DETENTE_SKIP_PROMTOOL=1` says deliberately that it is not wanted here.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every query of the dashboard, with its panel's title.
fn dashboard_queries() -> Vec<(String, String)> {
    let dashboard: Value =
        serde_json::from_str(&read("ops/grafana/detente-dashboard.json")).expect("valid JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("a query has an expression");
            out.push((
                panel["title"].as_str().unwrap_or("").to_string(),
                expr.into(),
            ));
        }
    }
    out
}

/// The `detente_…` metric names in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("detente_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names.sort();
    names.dedup();
    names
}

#[test]
fn dashboard_and_rules_use_only_families_the_node_serves() {
    let served = read("crates/node/src/metrics.rs");
    let documented = read("docs/deadlines.md");
    let queries: String = dashboard_queries()
        .into_iter()
        .map(|(_, e)| e + "\n")
        .collect();
    let rules = read("ops/prometheus/detente-alerts.yml");
    let used = metric_names(&(queries + &rules));
    assert!(used.len() >= 10, "found only {used:?}");
    for name in &used {
        assert!(
            served.contains(&format!("\"{name}\"")),
            "{name} is used in ops/ but not served by metrics.rs"
        );
        assert!(
            documented.contains(name.as_str()),
            "{name} is not documented in docs/deadlines.md"
        );
    }
    // And the four alerts the operators asked for are there.
    for alert in [
        "DetenteLinkDown",
        "DetenteLinkTestMissed",
        "DetenteOverdue",
        "DetenteEquivocation",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
    }
}

#[test]
fn every_dashboard_query_is_valid_promql() {
    if std::env::var_os("DETENTE_SKIP_PROMTOOL").is_some_and(|v| v == "1") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, expr)) in dashboard_queries().iter().enumerate() {
        // Grafana's variables are not PromQL; `$instance` is a regular expression.
        let expr = expr.replace("$instance", ".*");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let file = dir.path().join("dashboard.rules.yml");
    std::fs::write(&file, rules).unwrap();
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect(
            "promtool is missing: apt-get install prometheus (scripts/test does), \
             or set DETENTE_SKIP_PROMTOOL=1",
        );
    assert!(
        out.status.success(),
        "promtool refused a dashboard query:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
