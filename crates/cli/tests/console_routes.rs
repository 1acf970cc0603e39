//! The console's HTTP surface with real node processes: every route without a session
//! (redirect to the login page, or 401 for the API), with a session of each role, CSRF
//! rejection, the login rate limit, security headers, and the audit log.

use std::path::PathBuf;

use detente::harness::ProcNode;
use detente::screenshots::{two_nodes, two_nodes_with, TEST_PASSWORD};
use detente_node::console::auth::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

struct Browser {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn check_headers(r: &reqwest::Response, what: &str) {
    let h = r.headers();
    let csp = h
        .get("content-security-policy")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("{what}: no CSP"));
    assert!(csp.contains("default-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
    assert_eq!(
        h.get("x-content-type-options").unwrap(),
        "nosniff",
        "{what}"
    );
    assert_eq!(h.get("referrer-policy").unwrap(), "no-referrer", "{what}");
}

/// GET /login for the CSRF cookie, then post the form. Returns the answer.
async fn post_login(
    http: &reqwest::Client,
    base: &str,
    login: &str,
    password: &str,
) -> reqwest::Response {
    let page = http.get(format!("{base}/login")).send().await.unwrap();
    check_headers(&page, "login page");
    let set = page
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let csrf = cookie.split_once('=').unwrap().1.to_string();
    http.post(format!("{base}/login"))
        .header("cookie", &cookie)
        .form(&[("login", login), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap()
}

async fn login(node: &ProcNode, login: &str) -> Browser {
    login_with(node, login, TEST_PASSWORD).await
}

async fn login_with(node: &ProcNode, login: &str, password: &str) -> Browser {
    let http = client();
    let base = format!("http://{}", node.console_addr);
    let r = post_login(&http, &base, login, password).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "login {login}");
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("detente_session="))
        .expect("a session cookie");
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{base}/console"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split("<meta name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the page carries its CSRF token")
        .to_string();
    Browser {
        http,
        base,
        cookie,
        csrf,
    }
}

impl Browser {
    async fn get(&self, path: &str) -> reqwest::Response {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap();
        check_headers(&r, path);
        r
    }

    /// The page at `path`, as text.
    async fn page(&self, path: &str) -> String {
        self.get(path).await.text().await.unwrap()
    }

    async fn form(&self, path: &str, fields: &[(&str, &str)], csrf: bool) -> reqwest::Response {
        let mut all: Vec<(&str, &str)> = fields.to_vec();
        if csrf {
            all.push(("csrf", &self.csrf));
        }
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(&all)
            .send()
            .await
            .unwrap()
    }

    async fn api(&self, method: Method, path: &str, body: Value, csrf: bool) -> reqwest::Response {
        let mut r = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .header("cookie", &self.cookie)
            .json(&body);
        if csrf {
            r = r.header("x-csrf-token", &self.csrf);
        }
        r.send().await.unwrap()
    }
}

const PAGES: &[&str] = &[
    "/console",
    "/console/live/timeline",
    "/console/live/alarm",
    "/console/live/queue",
    "/console/live/status",
    "/console/live/link",
    "/console/messages/ID",
    "/console/live/messages/ID",
    "/console/messages/ID/print",
    "/console/compose",
    "/console/compose/map?format=launch&f.launch_area=circle:40.5,-100.2,25",
    "/console/link",
    "/console/transcript",
    "/console/transcript/export?peer=beijing",
    "/console/counterparts",
    "/console/handover",
    "/console/settings",
    "/console/audit",
    "/console/audit/export.csv",
    "/console/users",
    "/console/events",
];

const FORMS: &[&str] = &[
    "/logout",
    "/console/handover",
    "/console/density",
    "/console/messages/ID/receipt",
    "/console/compose",
    "/console/lang",
    "/console/tz",
    "/console/alarm/silence",
    "/console/users",
];

/// What a GET of `page` answers for `role`.
fn expected_get(page: &str, role: Role) -> StatusCode {
    let allowed = match page {
        p if p.starts_with("/console/compose") => role.can_compose(),
        p if p.starts_with("/console/transcript/export") => role.can_export(),
        "/console/audit" | "/console/audit/export.csv" => role.can_read_audit(),
        "/console/users" => role == Role::Admin,
        _ => true,
    };
    if allowed {
        StatusCode::OK
    } else {
        StatusCode::FORBIDDEN
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_session_role_and_csrf() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    for (login, role) in [("watch1", Role::Watch), ("admin1", Role::Admin)] {
        detente::users::create(&w.dir, login, role, TEST_PASSWORD, None)
            .await
            .unwrap();
    }
    // A message from beijing to answer at washington.
    let id = detente::screenshots::deliver(
        &b,
        &w,
        &json!({"to": "washington", "text": "hello", "precedence": "priority"}),
    )
    .await
    .unwrap();
    let wc = w.client().unwrap();
    let base = format!("http://{}", w.console_addr);
    let anon = client();

    // Without a session: pages and forms go to the login page, the API answers 401.
    for page in PAGES {
        let r = anon
            .get(format!("{base}{}", page.replace("ID", &id)))
            .send()
            .await
            .unwrap();
        check_headers(&r, page);
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{page}");
        assert_eq!(r.headers().get("location").unwrap(), "/login", "{page}");
    }
    for form in FORMS {
        let r = anon
            .post(format!("{base}{}", form.replace("ID", &id)))
            .form(&[("csrf", "x")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{form}");
    }
    for (method, path) in [
        (Method::GET, "/api/v1/id"),
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/messages"),
        (Method::POST, "/api/v1/messages"),
        (Method::POST, "/api/v1/messages/batch"),
        (Method::POST, "/api/v1/peers/beijing/reload"),
    ] {
        let r = anon
            .request(method, format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        check_headers(&r, path);
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    // The static assets need no session, and carry the headers too.
    for asset in ["app.js", "app.css", "alarm.wav"] {
        let r = anon
            .get(format!("{base}/console/assets/{asset}"))
            .send()
            .await
            .unwrap();
        check_headers(&r, asset);
        assert_eq!(r.status(), StatusCode::OK, "{asset}");
    }

    // With a session of each role.
    let roles = [
        ("watch1", Role::Watch),
        ("duty", Role::Supervisor),
        ("chief", Role::Principal),
        ("audit", Role::Auditor),
        ("admin1", Role::Admin),
    ];
    for (login_name, role) in roles {
        let s = login(&w, login_name).await;
        for page in PAGES {
            let r = s.get(&page.replace("ID", &id)).await;
            assert_eq!(
                r.status(),
                expected_get(page, role),
                "{page} as {login_name}"
            );
        }
        // Every form and every changing API call without the CSRF token: refused.
        for form in FORMS {
            let r = s
                .form(&form.replace("ID", &id), &[("level", "read")], false)
                .await;
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "{form} without CSRF as {login_name}"
            );
        }
        let r = s
            .api(
                Method::POST,
                "/messages",
                json!({"to": "beijing", "text": "x"}),
                false,
            )
            .await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "API POST without CSRF");

        // Sending a FLASH: form and API.
        let flash = [
            ("to", "beijing"),
            ("precedence", "flash"),
            ("topic", "general"),
            ("text", "flash from the route test"),
            ("lang", "en"),
        ];
        let r = s.form("/console/compose", &flash, true).await;
        let expected = match role {
            Role::Supervisor | Role::Principal => StatusCode::SEE_OTHER,
            Role::Watch => StatusCode::UNPROCESSABLE_ENTITY,
            Role::Auditor | Role::Admin => StatusCode::FORBIDDEN,
        };
        assert_eq!(r.status(), expected, "compose FLASH as {login_name}");
        if role == Role::Watch {
            let page = r.text().await.unwrap();
            assert!(
                page.contains("id=\"err-precedence\""),
                "the error is at the field"
            );
        }
        let r = s
            .api(
                Method::POST,
                "/messages",
                json!({"to": "beijing", "text": "api flash", "precedence": "flash"}),
                true,
            )
            .await;
        let expected = if role.can_send(detente_proto::Precedence::Flash) {
            StatusCode::CREATED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status(), expected, "API FLASH as {login_name}");
        let r = s
            .api(
                Method::POST,
                "/messages",
                json!({"to": "beijing", "text": "api routine", "precedence": "routine"}),
                true,
            )
            .await;
        let expected = if role.can_compose() {
            StatusCode::CREATED
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status(), expected, "API ROUTINE as {login_name}");

        // Marking read, then acknowledging (the answer needs a principal or supervisor).
        let receipt = format!("/console/messages/{id}/receipt");
        let r = s.form(&receipt, &[("level", "read")], true).await;
        let expected = if role.can_mark_read() {
            StatusCode::SEE_OTHER
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status(), expected, "mark read as {login_name}");
        if !role.can_answer() {
            let r = s.form(&receipt, &[("level", "acknowledged")], true).await;
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "acknowledge as {login_name}"
            );
            let r = s
                .api(
                    Method::POST,
                    &format!("/messages/{id}/receipts"),
                    json!({"level": "acknowledged"}),
                    true,
                )
                .await;
            assert_eq!(
                r.status(),
                StatusCode::FORBIDDEN,
                "API acknowledge as {login_name}"
            );
        }
        // Adding an account: administrators only.
        let new_login = format!("new-{login_name}");
        let add = [
            ("action", "add"),
            ("login", new_login.as_str()),
            ("role", "watch"),
            ("lang", "en"),
            ("password", TEST_PASSWORD),
            ("password_again", TEST_PASSWORD),
        ];
        let r = s.form("/console/users", &add, true).await;
        let expected = if role == Role::Admin {
            StatusCode::SEE_OTHER
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status(), expected, "add a user as {login_name}");
        let r = s
            .api(Method::POST, "/peers/beijing/reload", json!({}), true)
            .await;
        let expected = if role == Role::Admin {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(r.status(), expected, "reload peer as {login_name}");

        // Logout ends the session.
        let r = s.form("/logout", &[], true).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        let r = s.get("/console").await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "after logout");
    }

    // The principal acknowledges; the command line's token keeps working.
    let s = login(&w, "chief").await;
    let r = s
        .form(
            &format!("/console/messages/{id}/receipt"),
            &[("level", "acknowledged"), ("note", "seen")],
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let m = wc.get(&format!("/api/v1/messages/{id}")).await.unwrap();
    assert!(!m["receipts"]["acknowledged"].is_null());

    // Wrong passwords: refused, then throttled even with the right one.
    let http = client();
    for _ in 0..detente_node::console::auth::LOGIN_FAILURES_PER_LOGIN_MAX {
        let r = post_login(&http, &base, "duty", "wrong password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = post_login(&http, &base, "duty", TEST_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // A login form without its CSRF cookie is refused.
    let r = http
        .post(format!("{base}/login"))
        .form(&[
            ("login", "chief"),
            ("password", TEST_PASSWORD),
            ("csrf", "forged"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // The auditor sees every action in the audit log.
    let a = login(&w, "audit").await;
    let log = a.get("/console/audit").await.text().await.unwrap();
    for action in [
        "login-failed",
        "login-throttled",
        "send",
        "receipt",
        "refused",
        "logout",
        "user-add",
    ] {
        assert!(
            log.contains(&format!("<td translate=\"no\">{action}</td>")),
            "audit log lacks {action}"
        );
    }
    drop((w, b));
}

/// `detente user add` reads the password from a file or standard input (never from the
/// command line), refuses a short one, and `user list --json` shows the account.
#[test]
fn user_add_reads_the_password_from_a_file_or_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let exe = env!("CARGO_BIN_EXE_detente");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let init = Command::new(exe)
        .args([
            "init",
            "--dir",
            dir.to_str().unwrap(),
            "--name",
            "washington",
            "--party",
            "US",
        ])
        .output()
        .unwrap();
    assert!(init.status.success());
    let file = tmp.path().join("pw");
    std::fs::write(&file, "a long enough password\n").unwrap();
    let add = Command::new(exe)
        .args([
            "user",
            "add",
            "--dir",
            dir.to_str().unwrap(),
            "--name",
            "duty",
            "--role",
            "supervisor",
        ])
        .arg("--password-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let mut child = Command::new(exe)
        .args([
            "user",
            "add",
            "--dir",
            dir.to_str().unwrap(),
            "--name",
            "chief",
            "--role",
            "principal",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"another long password\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Too short: refused, exit 1, with a hint.
    let mut child = Command::new(exe)
        .args([
            "user",
            "add",
            "--dir",
            dir.to_str().unwrap(),
            "--name",
            "x",
            "--role",
            "watch",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"short\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("error: ") && stderr.contains("hint: "),
        "{stderr}"
    );
    // There is no flag that takes the password itself.
    let out = Command::new(exe)
        .args([
            "user",
            "add",
            "--dir",
            dir.to_str().unwrap(),
            "--name",
            "y",
            "--role",
            "watch",
            "--password",
            "secret123",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let list = Command::new(exe)
        .args(["user", "list", "--dir", dir.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    let users: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(
        users,
        json!([
            {"login": "chief", "role": "principal", "lang": "en"},
            {"login": "duty", "role": "supervisor", "lang": "en"},
        ])
    );
    assert!(list.stderr.is_empty(), "nothing drawn off a terminal");
    store_spinner_on_a_terminal(exe, &dir, &file);
}

/// On a terminal (a pseudo-terminal made by util-linux's `script`), `user add` and `user
/// list` say that they open the store, with `serve`'s spinner, and still print their lines.
fn store_spinner_on_a_terminal(exe: &str, dir: &std::path::Path, password: &std::path::Path) {
    let dir = dir.display();
    for (command, printed) in [
        (
            format!(
                "{exe} user add --dir {dir} --name pty --role watch --password-file {}",
                password.display()
            ),
            "created console user pty",
        ),
        (format!("{exe} user list --dir {dir}"), "chief"),
    ] {
        let on_terminal = std::process::Command::new("script")
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .output()
            .expect("script (util-linux) makes a pseudo-terminal");
        let seen = String::from_utf8_lossy(&on_terminal.stdout);
        assert_eq!(on_terminal.status.code(), Some(0), "{command}: {seen}");
        assert!(
            seen.contains("opening the store"),
            "{command}: a spinner on a terminal: {seen:?}"
        );
        assert!(seen.contains(printed), "{command}: {seen:?}");
    }
}

/// What the peer writes is shown as text, never as markup: a hostile text, translation,
/// author and topic, on the timeline, the message page, the live regions and the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_from_the_peer_is_escaped_on_every_view() {
    const HOSTILE: &str = "</p><script>alert(1)</script><img src=x onerror=alert(2)>\"'";
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let id = detente::screenshots::deliver(
        &b,
        &w,
        &json!({"to": "washington", "text": HOSTILE, "precedence": "flash",
                    "author": "<b>mallory</b>",
                    "translations": [["en", HOSTILE]]}),
    )
    .await
    .unwrap();
    let chief = login(&w, "chief").await;
    for page in [
        "/console".to_string(),
        "/console/live/timeline".into(),
        format!("/console/messages/{id}"),
        format!("/console/live/messages/{id}"),
        "/console/live/queue".into(),
        "/console/live/alarm".into(),
    ] {
        let r = chief.get(&page).await;
        assert_eq!(r.status(), StatusCode::OK, "{page}");
        let body = r.text().await.unwrap();
        for raw in ["<script>alert", "<img src=x", "<b>mallory"] {
            assert!(!body.contains(raw), "{page} shows {raw:?} as markup");
        }
        assert!(
            body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{page} does not show the text at all"
        );
    }
    drop((w, b));
}

/// Full-text search over the channel (issue 15): a text found by two of its words on the
/// Chinese console, a notification found by the words of its Chinese rendering on the
/// English console (every console language is indexed), and results paged like the
/// timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_finds_texts_and_notifications_in_both_languages_and_pages() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let wc = w.client().unwrap();
    let bc = b.client().unwrap();
    // Notifications need the channel's charter (its formats).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (c, peer) in [(&wc, "beijing"), (&bc, "washington")] {
        while c
            .get(&format!("/api/v1/peers/{peer}/charter"))
            .await
            .unwrap()["state"]
            != "agreed"
        {
            assert!(std::time::Instant::now() < deadline, "no charter agreed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let send = |body: Value| {
        let wc = &wc;
        async move { wc.post("/api/v1/messages", &body).await.unwrap() }
    };
    let text = send(json!({"to": "beijing", "text": "Request a call on the voice line"})).await;
    let text_id = text["id"].as_str().unwrap().to_string();
    let fields: Vec<Value> = [
        ("window_start", "2030-01-01T10:00:00Z"),
        ("window_end", "2030-01-01T12:00:00Z"),
        ("launch_area", "circle:34.7,-120.6,30"),
        ("impact_area", "circle:9.4,167.5,100"),
        ("count", "1"),
        ("category", "icbm"),
        ("remarks", "Scheduled test"),
    ]
    .iter()
    .map(|(k, v)| json!({"key": k, "value": v}))
    .collect();
    let launch = send(json!({"to": "beijing", "format": "launch", "fields": fields})).await;
    let launch_id = launch["id"].as_str().unwrap().to_string();
    for n in 0..55 {
        send(json!({"to": "beijing", "text": format!("Weather report {n}")})).await;
    }
    loop {
        let inbox = bc.get("/api/v1/messages?limit=100").await.unwrap();
        if inbox.as_array().map_or(0, Vec::len) >= 57 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the messages never all arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let ids = |html: &str| -> Vec<String> {
        html.split("data-id=\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_string)
            .collect()
    };

    // Beijing's console is Chinese; an English text is found by two of its words, in any case.
    let chief_b = login(&b, "chief").await;
    let page = chief_b
        .get("/console/live/timeline?q=VOICE+line")
        .await
        .text()
        .await
        .unwrap();
    let found = ids(&page);
    assert!(found.contains(&text_id), "the text is found");
    assert!(!found.contains(&launch_id), "only what matches");
    let none = chief_b
        .get("/console/live/timeline?q=voice+nowhere")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        none.contains("没有消息包含这些词语"),
        "no match is said so, in Chinese"
    );

    // Washington's console is English; the launch notification is found by the words of its
    // Chinese rendering too.
    let chief_w = login(&w, "chief").await;
    let page = chief_w
        .get("/console/live/timeline?q=弹道导弹")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(
        ids(&page).iter().filter(|i| **i == launch_id).count(),
        1,
        "{page}"
    );

    // 55 reports: a page of 50, then the rest, by the pager's own link.
    // (The live region is the timeline alone: the queue's items carry ids too.)
    let page = chief_w
        .get("/console/live/timeline?q=report")
        .await
        .text()
        .await
        .unwrap();
    let first = ids(&page);
    assert_eq!(first.len(), 50);
    assert!(!first.contains(&text_id));
    let older = page
        .split("id=\"older\" rel=\"next\" href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("a link to the older results")
        .replace("&amp;", "&");
    assert!(older.contains("q=report"), "{older}");
    let older = older.replace("/console?", "/console/live/timeline?");
    let rest = ids(&chief_w.get(&older).await.text().await.unwrap());
    assert_eq!(rest.len(), 5);
    assert!(rest.iter().all(|i| !first.contains(i)));
    drop((w, b));
}

/// Replying to a `dialogue-request` opens a `dialogue-reply` form with the request, the
/// answer and the slot filled in, under the request itself; sending it answers the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_dialogue_request_is_prefilled_and_answers_it() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let (wc, bc) = (w.client().unwrap(), b.client().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (c, peer) in [(&wc, "beijing"), (&bc, "washington")] {
        while c
            .get(&format!("/api/v1/peers/{peer}/charter"))
            .await
            .unwrap()["state"]
            != "agreed"
        {
            assert!(std::time::Instant::now() < deadline, "no charter agreed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let fields: Vec<Value> = [
        ("from_name", "Deputy Secretary"),
        ("to_name", "Vice Minister"),
        ("mode", "video-call"),
        ("slot_1", "2030-01-01T10:00:00Z/2030-01-01T11:00:00Z"),
        ("slot_2", "2030-01-02T10:00:00Z/2030-01-02T11:00:00Z"),
        ("agenda", "Rules for unplanned encounters at sea."),
    ]
    .iter()
    .map(|(k, v)| json!({"key": k, "value": v}))
    .collect();
    let sent = wc
        .post(
            "/api/v1/messages",
            &json!({"to": "beijing", "format": "dialogue-request", "fields": fields}),
        )
        .await
        .unwrap();
    let id = sent["id"].as_str().unwrap().to_string();
    while bc.get(&format!("/api/v1/messages/{id}")).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    let chief = login(&b, "chief").await;
    let page = chief
        .get(&format!("/console/messages/{id}"))
        .await
        .text()
        .await
        .unwrap();
    let href = page
        .split("class=\"button reply-accept\" href=\"")
        .nth(2)
        .and_then(|s| s.split('"').next())
        .expect("one accept button per slot")
        .replace("&amp;", "&");
    assert!(href.contains("f.accepted_slot=2"), "{href}");
    let form = chief.get(&href).await.text().await.unwrap();
    assert!(
        form.contains(&format!(
            "id=\"f-request\" name=\"f.request\" value=\"{id}\""
        )),
        "{form}"
    );
    assert!(
        form.contains("<option value=\"accept\" selected>"),
        "the answer is chosen"
    );
    assert!(form.contains("id=\"f-accepted_slot\" name=\"f.accepted_slot\" value=\"2\""));
    let shown = form
        .split("class=\"replying-to\"")
        .nth(1)
        .expect("the request is shown");
    assert!(shown.contains(&format!("data-id=\"{id}\"")));

    let r = chief
        .form(
            "/console/compose",
            &[
                ("to", "washington"),
                ("precedence", "priority"),
                ("topic", "dialogue"),
                ("lang", "zh-CN"),
                ("reply_to", &id),
                ("format", "dialogue-reply"),
                ("f.request", &id),
                ("f.response", "accept"),
                ("f.accepted_slot", "2"),
            ],
            true,
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    loop {
        let out = wc.get("/api/v1/messages?direction=in").await.unwrap();
        if let Some(reply) = out
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["in_reply_to"] == id.as_str())
        {
            assert_eq!(reply["format"], "dialogue-reply");
            assert_eq!(reply["fields"]["accepted_slot"], "2");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the reply never came");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop((w, b));
}

/// Times are picked in the node's time zone, named in the operator's language, and sent as
/// UTC: washington (Eastern Time) picks 05:00 on 1 January and beijing receives 10:00 UTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn times_picked_in_the_node_time_zone_are_sent_as_utc() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let (wc, bc) = (w.client().unwrap(), b.client().unwrap());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for (c, peer) in [(&wc, "beijing"), (&bc, "washington")] {
        while c
            .get(&format!("/api/v1/peers/{peer}/charter"))
            .await
            .unwrap()["state"]
            != "agreed"
        {
            assert!(std::time::Instant::now() < deadline, "no charter agreed");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    let duty = login(&w, "duty").await;
    let form = duty
        .get("/console/compose?to=beijing&format=launch")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        form.contains("<label for=\"fl-window_start\">or pick it in Eastern Time:</label>"),
        "{form}"
    );
    assert!(
        form.contains("type=\"datetime-local\" id=\"fl-window_start\" name=\"fl.window_start\"")
    );
    // The language is chosen from a list, by name.
    let langs = form
        .split("<select id=\"lang\" name=\"lang\">")
        .nth(1)
        .expect("a language list");
    assert!(
        langs.starts_with("<option value=\"en\" selected>English</option>"),
        "{langs}"
    );

    let r = duty
        .form(
            "/console/compose",
            &[
                ("to", "beijing"),
                ("precedence", "priority"),
                ("topic", "launch"),
                ("lang", "en"),
                ("format", "launch"),
                ("f.window_start", ""),
                ("fl.window_start", "2030-01-01T05:00"),
                ("f.window_end", ""),
                ("fl.window_end", "2030-01-01T07:30"),
                ("f.launch_area", "circle:34.7,-120.6,30"),
                ("f.impact_area", "circle:9.4,167.5,100"),
                ("f.count", "1"),
                ("f.category", "icbm"),
            ],
            true,
        )
        .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "{}",
        r.text().await.unwrap()
    );
    loop {
        let inbox = bc.get("/api/v1/messages?direction=in").await.unwrap();
        if let Some(m) = inbox
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["format"] == "launch")
        {
            assert_eq!(m["fields"]["window_start"], "2030-01-01T10:00:00Z");
            assert_eq!(m["fields"]["window_end"], "2030-01-01T12:30:00Z");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the launch never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop((w, b));
}

/// The audit log filtered by action, on the page and as a CSV download (itself audited).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_filtered_and_downloaded_as_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let _duty = login(&w, "duty").await;
    let chief = login(&w, "chief").await;
    let r = chief
        .form("/console/lang", &[("lang", "zh-CN")], true)
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let auditor = login(&w, "audit").await;

    let page = auditor
        .get("/console/audit?action=login")
        .await
        .text()
        .await
        .unwrap();
    let table = page.split("<table class=\"audit\">").nth(1).unwrap();
    assert!(
        table.contains(">duty<") && table.contains(">chief<"),
        "{table}"
    );
    assert!(!table.contains(">language<"), "only logins: {table}");
    assert!(page.contains("href=\"/console/audit/export.csv?action=login\""));

    let r = auditor.get("/console/audit/export.csv?action=login").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    assert!(r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .contains("attachment"));
    let csv = r.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "time,login,action,detail,source");
    assert_eq!(lines.len(), 4, "three logins, newest first: {csv}");
    assert!(lines[1].contains(",audit,login,auditor,"), "{csv}");
    assert!(lines[1..].iter().all(|l| l.contains(",login,")));
    // The download is recorded too.
    let page = auditor
        .get("/console/audit?action=audit-export")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("action=login"),
        "the download and its filter are audited"
    );
    // A watch officer cannot download it.
    let r = chief.get("/console/audit/export.csv").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    drop((w, b));
}

/// A conversation's print view has nothing live or clickable; the compact density is a
/// browser's choice, kept in a cookie.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn print_view_and_compact_density() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let id =
        detente::screenshots::deliver(&b, &w, &json!({"to": "washington", "text": "Print me"}))
            .await
            .unwrap();
    let chief = login(&w, "chief").await;
    let page = chief
        .get(&format!("/console/messages/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains(&format!("href=\"/console/messages/{id}/print\"")));
    let print = chief
        .get(&format!("/console/messages/{id}/print"))
        .await
        .text()
        .await
        .unwrap();
    assert!(print.contains(&format!("data-id=\"{id}\"")) && print.contains("Print me"));
    assert!(print.contains("Printed by chief at "), "{print}");
    for live in ["<script", "data-live", "<form", "<nav"] {
        assert!(!print.contains(live), "the print view has {live}");
    }

    assert!(!page.contains("class=\"compact\""));
    let r = chief
        .form("/console/density", &[("density", "compact")], true)
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.starts_with("detente_density=compact;") && set.contains("HttpOnly"),
        "{set}"
    );
    let compact = chief
        .http
        .get(format!("{}/console", chief.base))
        .header(
            "cookie",
            format!("{}; detente_density=compact", chief.cookie),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(compact.contains("<body data-duration-units=\"h|m|s\" class=\"compact\">"));
    let settings = chief
        .http
        .get(format!("{}/console/settings", chief.base))
        .header(
            "cookie",
            format!("{}; detente_density=compact", chief.cookie),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        settings.contains(">Comfortable view<"),
        "the way back: {settings}"
    );
    drop((w, b));
}

/// Shift handover: the outgoing officer signs off with a note and the open counts, the
/// incoming one acknowledges it (once, and never their own), both in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_is_handed_over_and_acknowledged_in_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    // Something still open to hand over.
    detente::screenshots::deliver(&b, &w, &json!({"to": "washington", "text": "Still open"}))
        .await
        .unwrap();
    let (duty, chief, auditor) = (
        login(&w, "duty").await,
        login(&w, "chief").await,
        login(&w, "audit").await,
    );
    let page = duty.get("/console/handover").await.text().await.unwrap();
    assert!(page.contains("No handover recorded yet."));
    assert!(page.contains("We owe 1"), "the open count: {page}");
    assert!(page.contains("data-peer=\"beijing\""), "each link: {page}");

    let r = duty
        .form(
            "/console/handover",
            &[
                ("action", "hand-over"),
                ("note", "Call <b>beijing</b> at 06:00"),
            ],
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page = duty.get("/console/handover").await.text().await.unwrap();
    assert!(page.contains("Handed over by duty at"));
    assert!(page.contains("Call &lt;b&gt;beijing&lt;/b&gt; at 06:00 [open: ours 1 (0 overdue), theirs 0 (0 overdue)]"), "{page}");
    assert!(
        !page.contains("id=\"handover-acknowledge\""),
        "not one's own"
    );
    let of = page
        .split("name=\"of\" value=\"")
        .nth(1)
        .map(|s| s.split('"').next().unwrap().to_string());
    assert!(of.is_none());

    let page = chief.get("/console/handover").await.text().await.unwrap();
    let of = page
        .split("name=\"of\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the incoming officer may acknowledge")
        .to_string();
    // The outgoing officer cannot acknowledge their own handover, even by hand.
    let r = duty
        .form(
            "/console/handover",
            &[("action", "acknowledge"), ("of", &of)],
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = chief
        .form(
            "/console/handover",
            &[("action", "acknowledge"), ("of", &of)],
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let page = chief.get("/console/handover").await.text().await.unwrap();
    assert!(page.contains("Acknowledged by chief at"), "{page}");
    let r = chief
        .form(
            "/console/handover",
            &[("action", "acknowledge"), ("of", &of)],
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::CONFLICT, "only once");
    // An auditor does not keep the watch; the audit log holds both steps.
    let r = auditor
        .form(
            "/console/handover",
            &[("action", "hand-over"), ("note", "x")],
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let log = auditor
        .get("/console/audit?action=handover-ack")
        .await
        .text()
        .await
        .unwrap();
    assert!(log.contains(&format!(">{of}<")), "{log}");
    drop((w, b));
}

/// An administrator manages the accounts in the browser under `detente user add`'s rules:
/// every invalid field is named next to itself, in form order; an added account signs in;
/// a reset password replaces the old one and ends the account's sessions; a disabled
/// account can neither sign in nor keep its session, and a reset enables it again; nobody
/// disables themselves. Every change is in the audit log under the administrator's name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_add_disable_and_reset_accounts_in_the_browser() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    detente::users::create(&w.dir, "admin1", Role::Admin, TEST_PASSWORD, None)
        .await
        .unwrap();
    let admin = login(&w, "admin1").await;
    let add =
        |login: &'static str, role: &'static str, password: &'static str, again: &'static str| {
            vec![
                ("action", "add"),
                ("login", login),
                ("role", role),
                ("lang", "zh-CN"),
                ("password", password),
                ("password_again", again),
            ]
        };
    // Three invalid fields: three errors, each next to its field, in form order.
    let r = admin
        .form(
            "/console/users",
            &add("bad login", "king", "short", "short"),
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await.unwrap();
    let at = |id: &str| {
        page.find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("{id}: {page}"))
    };
    assert!(at("new-login") < at("err-new-login"));
    assert!(at("err-new-login") < at("new-role"));
    assert!(at("new-role") < at("err-new-role"));
    assert!(at("err-new-role") < at("new-password"));
    assert!(at("new-password") < at("err-new-password"));
    assert!(page.contains("The password is too short."), "{page}");
    assert!(page.contains("value=\"bad login\""), "what was typed stays");
    assert!(
        !page.contains("value=\"short\""),
        "a password is never sent back"
    );
    let r = admin
        .form(
            "/console/users",
            &add("duty", "watch", "long enough", "long enougH"),
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("id=\"err-new-login\""),
        "an existing login: {page}"
    );
    assert!(page.contains("id=\"err-new-password-again\""), "{page}");

    // Added: it signs in, in its language.
    let r = admin
        .form(
            "/console/users",
            &add("night.1", "watch", "first password", "first password"),
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let list = admin.get("/console/users").await.text().await.unwrap();
    assert!(list.contains("data-login=\"night.1\""), "{list}");
    let night = login_with(&w, "night.1", "first password").await;
    assert!(night
        .get("/console")
        .await
        .text()
        .await
        .unwrap()
        .contains("lang=\"zh-CN\""));

    // Reset: the old password and the old session end.
    let reset = [
        ("action", "reset"),
        ("login", "night.1"),
        ("password", "second password"),
        ("password_again", "second password"),
    ];
    assert_eq!(
        admin.form("/console/users", &reset, true).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        night.get("/console").await.status(),
        StatusCode::SEE_OTHER,
        "session ended"
    );
    let base = format!("http://{}", w.console_addr);
    let r = post_login(&client(), &base, "night.1", "first password").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let night = login_with(&w, "night.1", "second password").await;

    // Disabled: its session ends and no password signs it in; a reset enables it again.
    let disable = [("action", "disable"), ("login", "night.1")];
    assert_eq!(
        admin.form("/console/users", &disable, true).await.status(),
        StatusCode::SEE_OTHER
    );
    assert_eq!(
        night.get("/console").await.status(),
        StatusCode::SEE_OTHER,
        "session ended"
    );
    let r = post_login(&client(), &base, "night.1", "second password").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = post_login(&client(), &base, "night.1", "!disabled").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let list = admin.get("/console/users").await.text().await.unwrap();
    assert!(!list.contains("id=\"disable-night.1\""), "already disabled");
    let self_disable = [("action", "disable"), ("login", "admin1")];
    let r = admin.form("/console/users", &self_disable, true).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let reset = [
        ("action", "reset"),
        ("login", "night.1"),
        ("password", "third password"),
        ("password_again", "third password"),
    ];
    assert_eq!(
        admin.form("/console/users", &reset, true).await.status(),
        StatusCode::SEE_OTHER
    );
    login_with(&w, "night.1", "third password").await;

    let log = admin
        .get("/console/audit?login=admin1")
        .await
        .text()
        .await
        .unwrap();
    for action in ["user-add", "user-password-reset", "user-disable"] {
        assert!(
            log.contains(&format!("<td translate=\"no\">{action}</td>")),
            "audit log lacks {action}: {log}"
        );
    }
    assert!(log.contains("night.1 watch"), "{log}");
    drop((w, b));
}

/// Wait (bounded) until `node` has agreed a charter with `peer`.
async fn wait_for_charter(node: &ProcNode, peer: &str) {
    let client = node.client().unwrap();
    for _ in 0..300 {
        let c = client
            .get(&format!("/api/v1/peers/{peer}/charter"))
            .await
            .unwrap();
        if c["state"] == "agreed" || c["agreed"].is_object() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no charter with {peer}");
}

/// Compose offers the charter's topics (`general` and each agreed format's) by name in the
/// operator's language, and refuses one off the list next to the topic field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_offers_the_charter_topics_in_the_operators_language() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    wait_for_charter(&w, "beijing").await;
    wait_for_charter(&b, "washington").await;
    let chief = login(&w, "chief").await;
    let page = chief.get("/console/compose").await.text().await.unwrap();
    assert!(
        page.contains("<select id=\"topic\" name=\"topic\""),
        "{page}"
    );
    for (topic, name) in [
        ("general", "General"),
        ("cyber", "Cyber"),
        ("launch", "Launch"),
    ] {
        assert!(
            page.contains(&format!("<option value=\"{topic}\"")) && page.contains(name),
            "{topic}: {page}"
        );
    }
    let zh = login(&b, "chief").await;
    let page = zh.get("/console/compose").await.text().await.unwrap();
    assert!(page.contains(">一般事务</option>"), "{page}");
    assert!(page.contains(">发射</option>"), "{page}");

    let send = |topic: &'static str| {
        [
            ("to", "beijing"),
            ("precedence", "routine"),
            ("topic", topic),
            ("text", "topic test"),
            ("lang", "en"),
        ]
    };
    let r = chief.form("/console/compose", &send("made-up"), true).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let page = r.text().await.unwrap();
    assert!(page.contains("id=\"err-topic\""), "{page}");
    assert!(page.contains("Choose one of the charter"), "{page}");
    let r = chief.form("/console/compose", &send("cyber"), true).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // The timeline names the topic in the operator's language.
    let timeline = chief.get("/console").await.text().await.unwrap();
    assert!(
        timeline.contains("<span data-topic=\"cyber\">Cyber</span>"),
        "{timeline}"
    );
    drop((w, b));
}

/// The launch's two areas on the offline map: on the receiver's message page (labelled in
/// its operator's language, the coastline data served from the binary), on the print view,
/// and in the sender's compose preview, which sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_shows_its_areas_on_the_offline_map_and_in_the_compose_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let id = detente::screenshots::delivered_launch(&w, &b)
        .await
        .unwrap();
    let chief = login(&b, "chief").await;
    for path in [
        format!("/console/messages/{id}"),
        format!("/console/messages/{id}/print"),
    ] {
        let page = chief.get(&path).await.text().await.unwrap();
        let map = page
            .split("<svg class=\"map\" id=\"message-map\" role=\"img\"")
            .nth(1)
            .unwrap_or_else(|| panic!("no map on {path}: {page}"))
            .split("</svg>")
            .next()
            .unwrap();
        assert!(
            map.contains("<title id=\"message-map-title\">地图："),
            "{map}"
        );
        assert_eq!(
            map.matches("<ellipse class=\"area area-").count(),
            2,
            "{map}"
        );
        assert!(map.contains("<path class=\"land\""), "coastlines: {map}");
        assert!(
            map.contains("发射区域") || map.contains("发射"),
            "labels in Chinese: {map}"
        );
        assert!(
            !map.contains("<script") && !map.contains("href"),
            "nothing from elsewhere"
        );
    }
    // A text has no map.
    let text = detente::screenshots::deliver(&w, &b, &json!({"to": "beijing", "text": "hi"}))
        .await
        .unwrap();
    let page = chief
        .get(&format!("/console/messages/{text}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!page.contains("<svg class=\"map\""));

    // The sender previews the areas typed so far; nothing is sent.
    let duty = login(&w, "duty").await;
    let before = w
        .client()
        .unwrap()
        .get("/api/v1/messages?direction=out")
        .await
        .unwrap();
    let r = duty
        .form(
            "/console/compose",
            &[
                ("to", "beijing"),
                ("precedence", "priority"),
                ("topic", "launch"),
                ("lang", "en"),
                ("format", "launch"),
                ("f.launch_area", "circle:34.7,-120.6,30"),
                ("f.impact_area", "polygon:9,167;10,168;9,169"),
                ("preview", "map"),
            ],
            true,
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let page = r.text().await.unwrap();
    assert!(
        page.contains("<svg class=\"map\" id=\"compose-map\""),
        "{page}"
    );
    assert!(page.contains("<polygon class=\"area area-1\""), "{page}");
    assert!(
        page.contains("value=\"circle:34.7,-120.6,30\""),
        "the form keeps what was typed"
    );
    assert!(page.contains("id=\"compose-map-preview\""), "{page}");
    let after = w
        .client()
        .unwrap()
        .get("/api/v1/messages?direction=out")
        .await
        .unwrap();
    assert_eq!(
        before.as_array().unwrap().len(),
        after.as_array().unwrap().len()
    );
    drop((w, b));
}

/// An operator reads and picks times in the zone they chose in the settings (issue 15,
/// item 5), kept with their account; another operator of the same node still reads the
/// node's; an unknown zone is refused; the choice is audited and can be undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_reads_times_in_the_zone_they_chose() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let sent = b
        .client()
        .unwrap()
        .post(
            "/api/v1/messages",
            &json!({"to": "washington", "precedence": "routine", "text": "What time is it?"}),
        )
        .await
        .unwrap();
    let id = sent["id"].as_str().unwrap().to_string();
    let bc = b.client().unwrap();
    bc.get(&format!(
        "/api/v1/messages/{id}/wait?level=delivered&timeout_ms=10000"
    ))
    .await
    .unwrap();
    let shanghai = detente_formats::zone_name("en", "Asia/Shanghai").expect("a name");
    let new_york = detente_formats::zone_name("en", "America/New_York").expect("a name");
    let chief = login(&w, "chief").await;
    let duty = login(&w, "duty").await;
    let settings = chief.page("/console/settings").await;
    assert!(
        settings.contains("<option value=\"\" selected>"),
        "the node's zone until one is chosen"
    );
    let r = chief
        .form("/console/tz", &[("tz", "Mars/Olympus_Mons")], true)
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = chief
        .form("/console/tz", &[("tz", "Asia/Shanghai")], true)
        .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let settings = chief.page("/console/settings").await;
    assert!(
        settings.contains("<option value=\"Asia/Shanghai\" selected"),
        "chosen"
    );
    let mine = message_page(&chief, &id).await;
    assert!(
        mine.contains(&shanghai) && !mine.contains(&new_york),
        "chief reads Beijing time"
    );
    let theirs = message_page(&duty, &id).await;
    assert!(
        theirs.contains(&new_york) && !theirs.contains(&shanghai),
        "duty still reads the node's time"
    );
    // Date-time pickers are in the chosen zone too (the server reads them in it).
    let compose = chief
        .page("/console/compose?to=beijing&format=launch")
        .await;
    assert!(
        compose.contains("data-tz=\"Asia/Shanghai\""),
        "pickers in Beijing time"
    );
    let compose = duty.page("/console/compose?to=beijing&format=launch").await;
    assert!(compose.contains("data-tz=\"America/New_York\""));
    // Undone: the node's zone again.
    let r = chief.form("/console/tz", &[("tz", "")], true).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(message_page(&chief, &id).await.contains(&new_york));
    let audit = login(&w, "audit").await;
    let log = audit.page("/console/audit?action=time-zone").await;
    assert!(
        log.contains("Asia/Shanghai") && log.contains(">node<"),
        "audited"
    );
    drop((w, b));
}

async fn message_page(who: &Browser, id: &str) -> String {
    who.page(&format!("/console/messages/{id}")).await
}

/// The alarm banner says what to do next (issue 15, item 2): the link to Beijing down, the
/// alarm carries the next step this node set for Beijing (`peers.beijing.next_step`), in
/// the node's language, and the counterparts directory lists it; a peer without one is
/// shown how to set it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_alarm_says_the_next_step() {
    const STEP: &str = "Call the MND duty line, +86 10 6000 0000, and read the message aloud";
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, mut b) = two_nodes_with(tmp.path(), Some(&exe), &[]).await.unwrap();
    w.set("peers.beijing.next_step", STEP).unwrap();
    let mut w = w;
    w.stop();
    w.start().unwrap();
    let wc = w
        .wait_ready(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let chief = login(&w, "chief").await;
    let directory = chief.page("/console/counterparts").await;
    assert!(
        directory.contains(&format!("<td lang=\"en\">{STEP}</td>")),
        "the directory lists the next step"
    );
    let zh = login(&b, "chief").await;
    assert!(
        zh.page("/console/counterparts")
            .await
            .contains("detente config set peers.washington.next_step TEXT"),
        "how to set one where none is"
    );
    // The link is up again after the restart before it is cut: the alarm is for a link
    // that went down.
    detente::harness::wait_link_up(&wc, "beijing", std::time::Duration::from_secs(30))
        .await
        .unwrap();
    b.stop();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let status: Value = wc.get("/api/v1/status").await.unwrap();
        if status["peers"][0]["link_down_alarm"] == true {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no link-down alarm: {status}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let banner = chief.page("/console/live/alarm").await;
    let item = banner
        .split("data-alarm-id=\"link-alarm-link-down-beijing\"")
        .nth(1)
        .expect("the link-down alarm");
    let item = item.split("</li>").next().unwrap();
    assert!(
        item.contains("Next step:") && item.contains(&format!("<span lang=\"en\">{STEP}</span>")),
        "{item}"
    );
    // A refused value leaves the setting as it was.
    assert!(w
        .set("peers.beijing.next_step", "line one\nline two")
        .is_err());
    assert!(w.set("peers.nobody.next_step", "x").is_err());
    drop((w, b));
}
