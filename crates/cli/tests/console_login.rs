//! The console's unauthenticated login path and its event streams, against a real node
//! process on loopback (issue 12, items 12 and 13): bodies and names are capped, parallel
//! guesses cannot pass the rate limit together, a stranger cannot lock the duty officer out,
//! failed logins are aggregated in the audit log; event streams are capped per session,
//! refused with a `retry:` the browser honours, and end at logout.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use detente::harness::ProcNode;
use detente::screenshots::{two_nodes, TEST_PASSWORD};
use detente_node::console::auth;
use detente_node::console::sse;
use reqwest::StatusCode;

const WAIT: Duration = Duration::from_secs(30);

fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(source.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

/// GET /login for the CSRF cookie, then post the form with `login` and `password`.
async fn post_login(
    http: &reqwest::Client,
    base: &str,
    login: &str,
    password: &str,
) -> reqwest::Response {
    let page = http.get(format!("{base}/login")).send().await.unwrap();
    let cookie = page.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = cookie.split_once('=').unwrap().1.to_string();
    http.post(format!("{base}/login"))
        .header("cookie", &cookie)
        .form(&[("login", login), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap()
}

/// Sign in; the session cookie and the page's CSRF token.
async fn session(http: &reqwest::Client, base: &str, login: &str) -> (String, String) {
    let r = post_login(http, base, login, TEST_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "login {login}");
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .find(|v| v.starts_with("detente_session="))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
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
        .unwrap()
        .to_string();
    (cookie, csrf)
}

/// Audit rows (as table rows of the audit page) that contain every one of `parts`.
async fn audit_rows(node: &ProcNode, parts: &[&str]) -> usize {
    let http = client_from("127.0.0.1");
    let base = format!("http://{}", node.console_addr);
    let (cookie, _) = session(&http, &base, "audit").await;
    let page = http
        .get(format!("{base}/console/audit"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.split("<tr>")
        .filter(|row| parts.iter().all(|p| row.contains(p)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_login_path_is_bounded_and_throttles_by_source() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let base = format!("http://{}", w.console_addr);

    // A body over the login form's cap is refused before it is read (64 KiB: small
    // enough to be sent whole before the answer comes).
    // Its own client: the server closes a connection whose body it did not read, and a
    // pooled connection reused after that would fail the next request.
    let oversized = client_from("127.0.0.2");
    let huge = "x".repeat(64 * 1024);
    let r = post_login(&oversized, &base, &huge, "x").await;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    drop(oversized);
    let stranger = client_from("127.0.0.2");
    // A long name is refused as a wrong login, and the audit log does not keep it.
    let long = "n".repeat(2000);
    let r = post_login(&stranger, &base, &long, "wrong password").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // A stranger guessing the duty officer's password is throttled ...
    for _ in 0..auth::LOGIN_FAILURES_PER_LOGIN_MAX {
        let r = post_login(&stranger, &base, "duty", "wrong password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = post_login(&stranger, &base, "duty", TEST_PASSWORD).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    // ... but the duty officer, at another address, still signs in.
    let officer = client_from("127.0.0.1");
    let r = post_login(&officer, &base, "duty", TEST_PASSWORD).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "the stranger locked the account"
    );

    // Parallel guesses cannot pass the limiter together: at most the limit reach the
    // password check (the others are throttled, or told the checks are busy).
    let guesser = client_from("127.0.0.3");
    let tries = (0..16).map(|_| {
        let (http, base) = (guesser.clone(), base.clone());
        tokio::spawn(async move {
            post_login(&http, &base, "chief", "wrong password")
                .await
                .status()
        })
    });
    let mut checked = 0;
    for t in tries {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(
        checked <= auth::LOGIN_FAILURES_PER_LOGIN_MAX,
        "{checked} parallel guesses reached the password check"
    );

    // Failed logins from one address are aggregated in the audit log.
    let flood = client_from("127.0.0.4");
    for i in 0..auth::LOGIN_FAILURES_PER_SOURCE_MAX {
        let r = post_login(&flood, &base, &format!("guess{i}"), "wrong password").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r = post_login(&flood, &base, "guess-more", "wrong password").await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let failed = audit_rows(&w, &["login-failed", "127.0.0.4"]).await;
    let expected = auth::LOGIN_FAILURES_PER_SOURCE_MAX.div_ceil(auth::LOGIN_FAILURES_PER_AUDIT_ROW);
    assert_eq!(
        failed, expected as usize,
        "failed logins are not aggregated"
    );
    assert_eq!(audit_rows(&w, &["login-throttled", "127.0.0.4"]).await, 1);
    assert_eq!(
        audit_rows(&w, &[&long[..100]]).await,
        0,
        "the long name was kept"
    );
    assert_eq!(audit_rows(&w, &["not a login name, 2000 bytes"]).await, 1);
    drop((w, b));
}

/// Read a stream's chunks until `want` appears in what was read, or the stream ends.
async fn read_until(r: &mut reqwest::Response, want: &str) -> String {
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(want) {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(c))) => seen.push_str(&String::from_utf8_lossy(&c)),
            Ok(_) => break,
            Err(_) => panic!("{want:?} did not come within {WAIT:?}; read {seen:?}"),
        }
    }
    seen
}

/// Whether the stream ends (rather than stays open) within [`WAIT`].
async fn ends(r: &mut reqwest::Response) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, r.chunk()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_capped_per_session_and_end_at_logout() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let base = format!("http://{}", w.console_addr);
    let http = client_from("127.0.0.1");
    let (cookie, csrf) = session(&http, &base, "duty").await;
    let open = |cookie: String| {
        let (http, base) = (http.clone(), base.clone());
        async move {
            http.get(format!("{base}/console/events"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    let mut streams = Vec::new();
    for _ in 0..sse::STREAMS_PER_SESSION_MAX {
        let mut r = open(cookie.clone()).await;
        assert_eq!(r.status(), StatusCode::OK);
        let first = read_until(&mut r, "event: hello").await;
        assert!(first.contains("retry: 2000"), "no retry: {first:?}");
        streams.push(r);
    }
    // One more for this session: told when to come back, and closed (a 503 would make
    // EventSource give up for good).
    let mut extra = open(cookie.clone()).await;
    assert_eq!(extra.status(), StatusCode::OK);
    let busy = read_until(&mut extra, "event: busy").await;
    assert!(busy.contains("retry: 5000"), "{busy:?}");
    assert!(ends(&mut extra).await, "the refused stream stayed open");
    // Another session is not affected by this one's cap.
    let (other, _) = session(&http, &base, "chief").await;
    let mut theirs = open(other).await;
    read_until(&mut theirs, "event: hello").await;

    // Logout ends every stream of the session at once; the other session's stays.
    let r = http
        .post(format!("{base}/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    for mut s in streams {
        assert!(ends(&mut s).await, "a stream outlived its session's logout");
    }
    let still = tokio::time::timeout(Duration::from_millis(500), theirs.chunk()).await;
    assert!(
        !matches!(still, Ok(Ok(None))),
        "another session's stream ended"
    );
    drop((w, b));
}
