//! Structured notifications between real node processes: a launch written in English reads
//! entirely in Chinese at the other node, invalid ones are refused naming the field with
//! nothing stored, and the glossary marks agreed terms.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use detente::harness::{wait_link_up, ProcNode};
use serde_json::Value;

fn detente(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detente"))
        .args(args)
        .output()
        .expect("run detente")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn json_of(out: &Output) -> Value {
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON document")
}

/// Messages this node has written (its outbox history), and its outbox for `peer`.
fn counts(dir: &Path, peer: &str) -> (usize, u64) {
    let d = dir.to_str().unwrap();
    let out = json_of(&detente(&[
        "inbox",
        "--dir",
        d,
        "--direction",
        "out",
        "--json",
    ]));
    let status = json_of(&detente(&["status", "--dir", d, "--json"]));
    let outbox = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == peer)
        .map(|p| p["outbox"].as_u64().unwrap())
        .unwrap();
    (out.as_array().unwrap().len(), outbox)
}

fn utc(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Runs of Latin letters that are not on the list of names and codes allowed in Chinese.
fn english_words(text: &str) -> Vec<String> {
    let allowed = ["UTC", "ICBM", "Asia/Shanghai"];
    text.split(|c: char| !c.is_ascii_alphabetic() && c != '/' && c != '_')
        .filter(|w| w.chars().any(|c| c.is_ascii_alphabetic()))
        .filter(|w| !allowed.contains(w))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_from_washington_reads_in_chinese_at_beijing() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let mut w = ProcNode::init(
        tmp.path(),
        "washington",
        "United States",
        "en",
        "America/New_York",
    )
    .ok()
    .unwrap();
    let mut b = ProcNode::init(tmp.path(), "beijing", "China", "zh-CN", "Asia/Shanghai")
        .ok()
        .unwrap();
    w.exe = exe.clone();
    b.exe = exe;
    ProcNode::pin_pair(&w, &b).ok().unwrap();
    w.start().ok().unwrap();
    b.start().ok().unwrap();
    let wc = w.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
    b.wait_ready(Duration::from_secs(60)).await.ok().unwrap();
    wait_link_up(&wc, "beijing", Duration::from_secs(60))
        .await
        .ok()
        .unwrap();
    let bc = b.client().ok().unwrap();
    // Formats are agreed in the channel's charter, signed by both on first contact.
    detente::demo_charter::show_agreed(&wc, &bc, Duration::from_secs(60))
        .await
        .ok()
        .unwrap();
    let wd = w.dir.to_str().unwrap().to_string();
    let bd = b.dir.to_str().unwrap().to_string();

    // The window opens two days from now, on a whole hour.
    let now = jiff::Timestamp::now();
    let start = jiff::Timestamp::from_second((now.as_second() / 3600 + 48) * 3600).unwrap();
    let end = start + jiff::SignedDuration::from_hours(3);
    let field = |k: &str, v: &str| format!("{k}={v}");
    let good = vec![
        field("window_start", &utc(start)),
        field("window_end", &utc(end)),
        field("launch_area", "circle:40.5,-100.2,25"),
        field("impact_area", "polygon:10,170;12,172;9,174"),
        field("count", "2"),
        field("category", "icbm"),
        field("remarks", "Routine test of the force."),
    ];
    let send = |fields: &[String]| {
        let mut args = vec![
            "send", "--dir", &wd, "--to", "beijing", "--format", "launch",
        ];
        for f in fields {
            args.push("--field");
            args.push(f);
        }
        detente(&args)
    };

    // Each invalid input: exit 1, the field named, nothing stored.
    let before = counts(&w.dir, "beijing");
    let replace = |key: &str, value: &str| {
        let mut f: Vec<String> = good
            .iter()
            .filter(|f| !f.starts_with(&format!("{key}=")))
            .cloned()
            .collect();
        if !value.is_empty() {
            f.push(field(key, value));
        }
        f
    };
    let soon = utc(now + jiff::SignedDuration::from_hours(2));
    let soon_end = utc(now + jiff::SignedDuration::from_hours(3));
    let mut too_soon = replace("window_start", &soon);
    too_soon.retain(|f| !f.starts_with("window_end="));
    too_soon.push(field("window_end", &soon_end));
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        (
            "end before start",
            replace(
                "window_end",
                &utc(start - jiff::SignedDuration::from_hours(1)),
            ),
            "window_end",
        ),
        (
            "latitude 91",
            replace("launch_area", "circle:91,10,5"),
            "launch_area",
        ),
        (
            "unknown enum value",
            replace("category", "cruise"),
            "category",
        ),
        (
            "missing required field",
            replace("impact_area", ""),
            "impact_area",
        ),
        ("count 0", replace("count", "0"), "count"),
        ("lead time under 24 h", too_soon.clone(), "window_start"),
    ];
    for (what, fields, key) in cases {
        let out = send(&fields);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains(&format!("[{key}: ")), "{what}: {err}");
        assert!(err.contains("hint: "), "{what}: {err}");
        assert_eq!(
            counts(&w.dir, "beijing"),
            before,
            "{what}: something was stored"
        );
    }
    // Several invalid fields at once: every one is reported, in the operator's language,
    // from the command line (beijing's operator reads Chinese) as from the API.
    let mut several = replace("count", "0");
    several.retain(|f| !f.starts_with("launch_area=") && !f.starts_with("impact_area="));
    several.push(field("launch_area", "circle:91,10,5"));
    let mut args = vec![
        "send",
        "--dir",
        &bd,
        "--to",
        "washington",
        "--format",
        "launch",
    ];
    for f in &several {
        args.extend(["--field", f]);
    }
    let out = detente(&args);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("通报有 3 个字段无效"), "{err}");
    assert!(err.contains("此字段必须填写"), "{err}");
    for key in ["count", "launch_area", "impact_area"] {
        assert!(err.contains(&format!("[{key}: ")), "{key}: {err}");
    }
    let fields: Vec<Value> = several
        .iter()
        .map(|f| {
            let (key, value) = f.split_once('=').unwrap();
            serde_json::json!({"key": key, "value": value})
        })
        .collect();
    let token = std::fs::read_to_string(w.dir.join("api.token")).unwrap();
    let answer = reqwest::Client::new()
        .post(format!("http://{}/api/v1/messages", w.console_addr))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({"to": "beijing", "format": "launch", "fields": fields}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 422);
    let body: Value = answer.json().await.unwrap();
    let problems = body["problems"].as_array().expect("problems");
    let keys: Vec<&str> = problems
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["count", "launch_area", "impact_area"], "{body}");
    assert_eq!(problems[2]["rule"], "required", "{body}");
    assert_eq!(problems[2]["message"], "This field is required.", "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("The notification has 3 invalid fields:"),
        "{body}"
    );
    // The same request asking for Chinese gets its problems and hint in Chinese from the
    // English-speaking node; a language the node has no words in gets the node's.
    for (asked, required, heading, hint) in [
        (
            "zh-CN,zh;q=0.9",
            "此字段必须填写。",
            "通报有 3 个字段无效",
            "查看字段和规则",
        ),
        (
            "fr-FR",
            "This field is required.",
            "The notification has 3 invalid fields:",
            "see the fields",
        ),
    ] {
        let answer = reqwest::Client::new()
            .post(format!("http://{}/api/v1/messages", w.console_addr))
            .bearer_auth(token.trim())
            .header("accept-language", asked)
            .json(&serde_json::json!({"to": "beijing", "format": "launch", "fields": fields}))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 422);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["problems"][2]["message"], required, "{asked}: {body}");
        assert!(
            body["error"].as_str().unwrap().starts_with(heading),
            "{asked}: {body}"
        );
        assert!(
            body["hint"].as_str().unwrap().starts_with(hint),
            "{asked}: {body}"
        );
    }
    assert_eq!(counts(&w.dir, "beijing"), before, "something was stored");

    // Marked late with a reason, the short-notice launch is accepted.
    let mut late = too_soon;
    late.push(field("late_reason", "Weather moved the test forward."));
    assert_eq!(send(&late).status.code(), Some(0), "late launch refused");

    // Beijing's glossary: "test" is agreed as 试验.
    let out = detente(&[
        "glossary",
        "add",
        "--dir",
        &bd,
        "--peer",
        "washington",
        "--term",
        "en=test",
        "--term",
        "zh-CN=试验",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list = json_of(&detente(&[
        "glossary",
        "list",
        "--dir",
        &bd,
        "--peer",
        "washington",
        "--json",
    ]));
    assert_eq!(list[0]["term_b"], "试验");

    let mut args = vec![
        "send",
        "--dir",
        &wd,
        "--to",
        "beijing",
        "--format",
        "launch",
        "--wait",
        "delivered",
        "--json",
    ];
    for f in &good {
        args.push("--field");
        args.push(f);
    }
    args.extend(["--field", "remarks@zh-CN=部队例行试验。"]);
    let sent = json_of(&detente(&args));
    assert_eq!(sent["state"], "delivered");
    assert_eq!(
        sent["precedence"], "immediate",
        "the format's default precedence"
    );

    let inbox = json_of(&detente(&[
        "inbox",
        "--dir",
        &bd,
        "--direction",
        "in",
        "--json",
    ]));
    let m = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == sent["id"])
        .expect("the launch arrived")
        .clone();
    assert_eq!(m["kind"], "notification");
    assert_eq!(m["format"], "launch");
    assert_eq!(m["fields"]["count"], "2");
    assert_eq!(m["fields"]["remarks"]["language"], "en");
    let rendered = m["rendered"].as_str().unwrap();
    // Everything but the free text (the remarks line and its notes) is in Chinese.
    let structured: Vec<&str> = rendered
        .lines()
        .filter(|l| !l.contains("Routine") && !l.contains("test"))
        .collect();
    for line in &structured {
        assert!(
            english_words(line).is_empty(),
            "English left in {line:?}:\n{rendered}"
        );
    }
    assert!(rendered.starts_with("弹道导弹发射通报"), "{rendered}");
    // The window in UTC and in Beijing time.
    let local = start.to_zoned(jiff::tz::TimeZone::get("Asia/Shanghai").unwrap());
    let utc_z = start.to_zoned(jiff::tz::TimeZone::UTC);
    let expected = format!(
        "{}年{:02}月{:02}日 {:02}:00 UTC（北京时间 {}年{:02}月{:02}日 {:02}:00）",
        utc_z.year(),
        utc_z.month(),
        utc_z.day(),
        utc_z.hour(),
        local.year(),
        local.month(),
        local.day(),
        local.hour()
    );
    assert!(
        rendered.contains(&expected),
        "{expected} not in:\n{rendered}"
    );
    assert!(rendered.contains("洲际弹道导弹（ICBM）"), "{rendered}");
    assert!(rendered.contains("导弹数量: 2"), "{rendered}");
    assert!(
        rendered.contains("Routine ⟦test⟧ of the force. [原文为英文]"),
        "{rendered}"
    );
    assert!(
        rendered.contains("礼节性译文（中文）：部队例行试验。"),
        "{rendered}"
    );
    assert!(rendered.contains("术语表：“test”即“试验”"), "{rendered}");

    // The same message read in English at Beijing, with New York time at Washington.
    let en = json_of(&detente(&[
        "inbox",
        "--dir",
        &bd,
        "--direction",
        "in",
        "--lang",
        "en",
        "--json",
    ]));
    let en = en
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == sent["id"])
        .unwrap()
        .clone();
    assert!(en["rendered"]
        .as_str()
        .unwrap()
        .starts_with("Ballistic missile launch notification"));

    // Read at Beijing by someone in New York: the local times inside the notification follow
    // the reader's zone (not the node's), named in the reader's language.
    let ny = start.to_zoned(jiff::tz::TimeZone::get("America/New_York").unwrap());
    let ny_en = format!(
        "{}-{:02}-{:02} {:02}:00 Eastern Time",
        ny.year(),
        ny.month(),
        ny.day(),
        ny.hour()
    );
    let ny_zh = format!(
        "美国东部时间 {}年{:02}月{:02}日 {:02}:00",
        ny.year(),
        ny.month(),
        ny.day(),
        ny.hour()
    );
    for (lang, expected, beijing) in [
        ("en", &ny_en, "China Standard Time"),
        ("zh-CN", &ny_zh, "北京时间"),
    ] {
        let read = json_of(&detente(&[
            "inbox",
            "--dir",
            &bd,
            "--direction",
            "in",
            "--lang",
            lang,
            "--tz",
            "America/New_York",
            "--json",
        ]));
        let m = read
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == sent["id"])
            .unwrap()
            .clone();
        let rendered = m["rendered"].as_str().unwrap();
        assert!(
            rendered.contains(expected.as_str()),
            "{expected} not in:\n{rendered}"
        );
        assert!(!rendered.contains(beijing), "{rendered}");
    }
    // A zone the database does not hold is refused, by the command and by the API.
    let out = detente(&["inbox", "--dir", &bd, "--tz", "Mars/Olympus_Mons"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    for tz in ["Mars/Olympus_Mons", &"A".repeat(65)] {
        let refused = bc
            .get(&format!("/api/v1/messages?tz={tz}"))
            .await
            .expect_err("an unknown zone is refused");
        assert_eq!(refused.status, Some(400), "{}", refused.error);
    }
    let out = json_of(&detente(&[
        "inbox",
        "--dir",
        &wd,
        "--direction",
        "out",
        "--json",
    ]));
    let mine = out
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == sent["id"])
        .unwrap()
        .clone();
    assert!(
        mine["rendered"].as_str().unwrap().contains("Eastern Time"),
        "{}",
        mine["rendered"]
    );

    w.stop();
    b.stop();
}

#[test]
fn formats_list_and_show_describe_every_field() {
    let list = json_of(&detente(&["formats", "list", "--json"]));
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    for id in [
        "launch",
        "space-launch",
        "cyber-incident",
        "encounter",
        "exercise",
        "nuclear-incident",
        "dialogue-request",
        "dialogue-reply",
        "text",
    ] {
        assert!(ids.contains(&id), "{id} missing from {ids:?}");
        let show = json_of(&detente(&["formats", "show", id, "--json"]));
        assert!(!show["fields"].as_array().unwrap().is_empty());
        assert_eq!(show["digest"].as_str().unwrap().len(), 64);
    }
    let out = detente(&["formats", "show", "launch"]);
    let shown = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    for key in [
        "window_start",
        "window_end",
        "launch_area",
        "impact_area",
        "count",
        "category",
        "remarks",
        "late_reason",
        "hypersonic-glide",
        "whole number from 1 to 100",
    ] {
        assert!(shown.contains(key), "{key} not in:\n{shown}");
    }
    let zh = text(&detente(&["formats", "show", "launch", "--lang", "zh-CN"]).stdout);
    assert!(
        zh.contains("弹道导弹发射通报") && zh.contains("整数，1至100"),
        "{zh}"
    );
    let out = detente(&["formats", "show", "warp-drive"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("hint: list the formats with: detente formats list"));
    // A field without a format is a usage error.
    let out = detente(&[
        "send",
        "--dir",
        "/nonexistent",
        "--to",
        "x",
        "--field",
        "a=b",
        "--text",
        "hi",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
