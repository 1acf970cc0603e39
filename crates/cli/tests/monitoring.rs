//! The monitoring files in `ops/` fit the node: every `detente_*` family the Grafana
//! dashboard and the Prometheus rules use is one that `crates/node/src/metrics.rs` serves and
//! `docs/deadlines.md` documents, and every dashboard query is valid PromQL (checked by
//! `promtool`, as recording rules). The alerting rules themselves are checked and unit-tested
//! by `promtool check rules` / `promtool test rules` in `scripts/test`. And a real
//! Prometheus (Debian's) scrapes a real node's OpenMetrics exposition and stores its series
//! under the names the rules and the dashboard use.
//!
//! Without `promtool` (Debian's `prometheus` package) the PromQL check fails, unless
//! `DETENTE_SKIP_PROMTOOL=1` says deliberately that it is not wanted here.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use detente::harness::{free_port, ProcNode};

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
    // The other way round: every family the node serves is documented and on the dashboard.
    let dashboard = read("ops/grafana/detente-dashboard.json");
    for line in served.lines() {
        let line = line.trim();
        let Some(name) = line
            .strip_prefix('"')
            .and_then(|rest| rest.strip_suffix("\","))
            .filter(|name| name.starts_with("detente_"))
        else {
            continue;
        };
        assert!(
            documented.contains(name),
            "{name} is served but not documented in docs/deadlines.md"
        );
        assert!(
            dashboard.contains(name),
            "{name} is served but not on ops/grafana/detente-dashboard.json"
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

/// Kills the Prometheus this test started when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The series Prometheus holds for `query` (instant query), as JSON.
async fn query(http: &reqwest::Client, base: &str, query: &str) -> Vec<Value> {
    let answer: Value = match http
        .get(format!("{base}/api/v1/query"))
        .query(&[("query", query)])
        .send()
        .await
    {
        Ok(response) => response.json().await.unwrap_or(Value::Null),
        Err(_) => Value::Null,
    };
    answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_node() {
    if std::env::var_os("DETENTE_SKIP_PROMTOOL").is_some_and(|v| v == "1") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut node = ProcNode::init(tmp.path(), "washington", "United States", "en", "UTC")
        .ok()
        .unwrap();
    node.exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    node.start().ok().unwrap();
    node.wait_ready(Duration::from_secs(60)).await.ok().unwrap();

    let port = free_port().ok().unwrap();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: detente\n    \
             metrics_path: /metrics\n    authorization:\n      type: Bearer\n      \
             credentials_file: {}\n    static_configs:\n      - targets: [\"{}\"]\n",
            node.dir.join("api.token").display(),
            node.console_addr
        ),
    )
    .unwrap();
    let _prometheus = Child(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus is missing: apt-get install prometheus (scripts/test does)"),
    );
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let up = query(&http, &base, "up{job=\"detente\"}").await;
        let stored = query(&http, &base, "detente_messages_stored").await;
        let counter = query(&http, &base, "detente_peer_keys_refused_total").await;
        let alarms = query(&http, &base, "detente_alarms_total{event=\"link_down\"}").await;
        if up.first().is_some_and(|s| s["value"][1] == "1")
            && !stored.is_empty()
            && !counter.is_empty()
            && !alarms.is_empty()
        {
            break;
        }
        if Instant::now() > deadline {
            let targets = match http.get(format!("{base}/api/v1/targets")).send().await {
                Ok(response) => response.text().await.unwrap_or_default(),
                Err(e) => format!("Prometheus unreachable: {e}"),
            };
            panic!(
                "Prometheus did not store the node's series: up {up:?}, stored {stored:?}, \
                 counter {counter:?}, alarms {alarms:?}; its targets: {targets}"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
