//! The console in a real headless Chromium (Debian's `chromium` and `chromium-driver`),
//! against two real node processes linked over TLS on loopback.
//!
//! The story: a supervisor at washington fills the `encounter` notification form (an
//! invalid position is refused next to its field) and sends it as a FLASH; a principal already
//! looking at beijing's timeline sees it appear, with the alarm, without reloading; the
//! principal acknowledges it; washington's open page shows the acknowledgment without
//! reloading. Then: a wrong password is refused, an invalid field is reported next to the
//! field, and a watch officer cannot send a FLASH.
//!
//! Without Chromium this test FAILS, unless DETENTE_SKIP_BROWSER=1 says to skip it.

use std::path::PathBuf;
use std::time::Duration;

use detente::screenshots::{login, two_nodes, TEST_PASSWORD};
use detente::webdriver::{chromium_paths, Driver, Session};
use detente_node::console::auth::Role;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn browser_available() -> bool {
    let (browser, driver) = chromium_paths();
    if browser.exists() && driver.exists() {
        return true;
    }
    if std::env::var("DETENTE_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPING the console browser test: DETENTE_SKIP_BROWSER=1 and {} or {} is missing ***\n",
            browser.display(),
            driver.display()
        );
        return false;
    }
    panic!(
        "{} or {} is missing: install them with `apt-get install -y --no-install-recommends chromium chromium-driver` \
         (scripts/test does), or set DETENTE_SKIP_BROWSER=1 to skip this test deliberately",
        browser.display(),
        driver.display()
    );
}

/// Mark the page, so that a later check can tell it was not reloaded.
async fn mark(s: &Session) {
    s.execute("window.__detenteMark = 'still-here'; return true;", vec![])
        .await
        .unwrap();
}

async fn not_reloaded(s: &Session) -> bool {
    s.execute("return window.__detenteMark === 'still-here';", vec![])
        .await
        .unwrap()
        == json!(true)
}

async fn wait_gone(s: &Session, css: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    while !s.find_all(css).await.unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "{css} did not go away"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Wait until the page's script has its event stream open (so nothing is missed).
async fn wait_live(s: &Session) {
    s.wait_for("body[data-live-connected=yes]", WAIT)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_real_browser() {
    if !browser_available() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    detente::users::create(&w.dir, "watch1", Role::Watch, TEST_PASSWORD, None)
        .await
        .unwrap();
    let driver = Driver::start().await.unwrap();
    let sw = driver.session(&tmp.path().join("profile-w")).await.unwrap();
    let sb = driver.session(&tmp.path().join("profile-b")).await.unwrap();

    // A wrong password is refused.
    login(&sw, &w, "duty", "not the password").await.unwrap();
    sw.wait_for("#login-error", WAIT).await.unwrap();
    assert!(!sw.text_of("#login-error").await.unwrap().is_empty());
    assert!(sw.current_url().await.unwrap().ends_with("/login"));
    assert!(sw.find_all("#logout").await.unwrap().is_empty());

    // Both sides sign in; beijing watches its timeline (in Chinese).
    login(&sw, &w, "duty", TEST_PASSWORD).await.unwrap();
    sw.wait_for("#logout", WAIT).await.unwrap();
    login(&sb, &b, "chief", TEST_PASSWORD).await.unwrap();
    sb.wait_for("#logout", WAIT).await.unwrap();
    assert_eq!(
        sb.execute("return document.documentElement.lang;", vec![])
            .await
            .unwrap(),
        json!("zh-CN")
    );
    wait_live(&sb).await;
    mark(&sb).await;
    assert!(sb.find_all("#alarm .alarm-flash").await.unwrap().is_empty());

    // washington fills the `encounter` notification form; an invalid position is reported
    // next to that field, and nothing is sent.
    sw.goto(&format!("http://{}/console/compose", w.console_addr))
        .await
        .unwrap();
    sw.select("#format", "encounter").await.unwrap();
    sw.click(&sw.find("#choose-format").await.unwrap())
        .await
        .unwrap();
    sw.wait_for("#f-position", WAIT).await.unwrap();
    sw.select("#precedence", "flash").await.unwrap();
    for (id, value) in [
        ("#f-time", "2026-11-29T02:40:00Z"),
        ("#f-position", "somewhere north"),
        ("#f-own_units", "Two F/A-18"),
        ("#f-other_units", "One J-15"),
        (
            "#f-description",
            "Closest approach about 150 m; no weapons used.",
        ),
    ] {
        let field = sw.find(id).await.unwrap();
        sw.type_text(&field, value).await.unwrap();
    }
    sw.select("#f-domain", "air").await.unwrap();
    sw.select("#f-signals", "radio-voice").await.unwrap();
    sw.click(&sw.find("#send").await.unwrap()).await.unwrap();
    sw.wait_for("#err-f-position", WAIT).await.unwrap();
    let beside = sw
        .execute(
            "const f = document.getElementById('f-position'); const e = document.getElementById('err-f-position'); \
             return f.parentElement === e.parentElement && f.getAttribute('aria-invalid') === 'true' \
             && f.getAttribute('aria-describedby').split(' ').includes('err-f-position');",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        beside,
        json!(true),
        "the position error is not next to its field"
    );
    assert_eq!(sw.find_all(".field-error").await.unwrap().len(), 1);
    // The form kept what was typed; correct the position and send the FLASH.
    let position = sw.find("#f-position").await.unwrap();
    sw.clear(&position).await.unwrap();
    sw.type_text(&position, "18.2,114.6").await.unwrap();
    sw.click(&sw.find("#send").await.unwrap()).await.unwrap();
    sw.wait_for(".msg.prec-flash.dir-out", WAIT).await.unwrap();
    let message_id = sw
        .attribute_of(".msg.prec-flash.dir-out", "data-id")
        .await
        .unwrap();
    wait_live(&sw).await;
    mark(&sw).await;

    // beijing sees it without reloading, with the alarm (and its sound).
    sb.wait_for("#alarm .alarm-flash", WAIT).await.unwrap();
    assert!(sb
        .text_of("#alarm .alarm-flash")
        .await
        .unwrap()
        .contains("特急"));
    // beijing reads the notification in Chinese, rendered at beijing from the structured
    // fields (no translation involved).
    let item = format!(".msg[data-id=\"{message_id}\"] .msg-text");
    sb.wait_for(&item, WAIT).await.unwrap();
    assert!(sb.text_of(&item).await.unwrap().contains("意外相遇报告"));
    sb.wait_for(
        &format!(".msg.prec-flash.dir-in[data-id=\"{message_id}\"]"),
        WAIT,
    )
    .await
    .unwrap();
    assert!(not_reloaded(&sb).await, "beijing's page was reloaded");
    let sounded = sb
        .execute(
            "return Number(document.body.getAttribute('data-alarm-sounded') || '0');",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        sounded.as_u64().unwrap_or(0) >= 1,
        "the alarm sound was not played"
    );

    // The principal opens it from the alarm and acknowledges with a note.
    sb.click(&sb.find("#alarm .alarm-flash a").await.unwrap())
        .await
        .unwrap();
    let note = sb.wait_for("#note", WAIT).await.unwrap();
    sb.type_text(&note, "收到").await.unwrap();
    sb.click(&sb.find("#acknowledge").await.unwrap())
        .await
        .unwrap();
    sb.wait_for(".r-acknowledged.done", WAIT).await.unwrap();
    wait_gone(&sb, "#alarm .alarm-flash").await;

    // washington's open page shows the acknowledgment without reloading.
    sw.wait_for(".r-acknowledged.done", WAIT).await.unwrap();
    assert!(not_reloaded(&sw).await, "washington's page was reloaded");
    assert!(sw
        .text_of(".r-acknowledged.done")
        .await
        .unwrap()
        .contains("Acknowledged"));
    sw.wait_for(".receipts .note", WAIT).await.unwrap();
    assert!(sw
        .text_of(".receipts .note")
        .await
        .unwrap()
        .contains("收到"));

    // An invalid field: the error is next to that field.
    sw.goto(&format!("http://{}/console/compose", w.console_addr))
        .await
        .unwrap();
    sw.wait_for("#text", WAIT).await.unwrap();
    sw.click(&sw.find("#send").await.unwrap()).await.unwrap();
    sw.wait_for("#err-text", WAIT).await.unwrap();
    assert!(!sw.text_of("#err-text").await.unwrap().is_empty());
    let beside = sw
        .execute(
            "const f = document.getElementById('text'); const e = document.getElementById('err-text'); \
             return f.parentElement === e.parentElement && f.getAttribute('aria-describedby') === 'err-text';",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(beside, json!(true), "the error is not next to its field");

    // A watch officer is not offered FLASH, and a forged FLASH is refused at the field.
    sw.click(&sw.find("#logout").await.unwrap()).await.unwrap();
    sw.wait_for("#login", WAIT).await.unwrap();
    login(&sw, &w, "watch1", TEST_PASSWORD).await.unwrap();
    sw.wait_for("#logout", WAIT).await.unwrap();
    sw.goto(&format!("http://{}/console/compose", w.console_addr))
        .await
        .unwrap();
    sw.wait_for("#precedence", WAIT).await.unwrap();
    assert!(sw
        .find_all("#precedence option[value=flash]")
        .await
        .unwrap()
        .is_empty());
    assert!(!sw
        .find_all("#precedence option[value=routine]")
        .await
        .unwrap()
        .is_empty());
    sw.execute(
        "const s = document.getElementById('precedence'); const o = document.createElement('option'); \
         o.value = 'flash'; o.textContent = 'FLASH'; s.appendChild(o); s.value = 'flash'; return true;",
        vec![],
    )
    .await
    .unwrap();
    let text = sw.find("#text").await.unwrap();
    sw.type_text(&text, "a forged flash").await.unwrap();
    sw.click(&sw.find("#send").await.unwrap()).await.unwrap();
    sw.wait_for("#err-precedence", WAIT).await.unwrap();
    let out = w
        .client()
        .unwrap()
        .get("/api/v1/messages?direction=out")
        .await
        .unwrap();
    let flashes = out
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["precedence"] == "flash")
        .count();
    assert_eq!(flashes, 1, "only the supervisor's FLASH was sent");

    sw.close().await;
    sb.close().await;
    drop(driver);
    drop((w, b));
}

/// Open the console's main page and wait until its live regions listen.
async fn open_console(s: &Session, w: &detente::harness::ProcNode) {
    s.goto(&format!("http://{}/console", w.console_addr))
        .await
        .unwrap();
    wait_live(s).await;
}

/// Two nodes, a browser, and Washington's principal signed in there.
async fn chief_at_washington() -> (
    tempfile::TempDir,
    detente::harness::ProcNode,
    detente::harness::ProcNode,
    Driver,
    Session,
) {
    let tmp = tempfile::tempdir().unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_detente"));
    let (w, b) = two_nodes(tmp.path(), Some(&exe)).await.unwrap();
    let driver = Driver::start().await.unwrap();
    let s = driver.session(&tmp.path().join("profile-w")).await.unwrap();
    login(&s, &w, "chief", TEST_PASSWORD).await.unwrap();
    s.wait_for("#logout", WAIT).await.unwrap();
    (tmp, w, b, driver, s)
}

/// The alarm settings: the volume chosen in this browser is what the sound test and a real
/// FLASH alarm play at; the desktop-notification button reports the browser's answer in the
/// operator's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_volume_sound_test_and_notification_permission() {
    if !browser_available() {
        return;
    }
    let (_tmp, w, b, driver, s) = chief_at_washington().await;
    s.goto(&format!("http://{}/console/settings", w.console_addr))
        .await
        .unwrap();
    s.wait_for("#notify-state[data-state]", WAIT).await.unwrap();
    let state = s.attribute_of("#notify-state", "data-state").await.unwrap();
    let shown = s.text_of("#notify-state").await.unwrap();
    assert!(
        ["default", "denied", "granted", "unsupported"].contains(&state.as_str()),
        "{state}"
    );
    assert!(shown.ends_with('.') && shown != state, "in words: {shown}");
    s.click(&s.find("#notify-enable").await.unwrap())
        .await
        .unwrap();

    // 30 %: kept by the browser, used by the test button and by the alarm itself.
    s.execute(
        "const r = document.getElementById('volume'); r.value = '30'; \
         r.dispatchEvent(new Event('input')); return true;",
        vec![],
    )
    .await
    .unwrap();
    s.click(&s.find("#sound-test").await.unwrap())
        .await
        .unwrap();
    s.wait_for("body[data-sound-tested='0.3']", WAIT)
        .await
        .unwrap();
    open_console(&s, &w).await;
    b.client()
        .unwrap()
        .post(
            "/api/v1/messages",
            &json!({"to": "washington", "precedence": "flash", "text": "Loud enough?"}),
        )
        .await
        .unwrap();
    s.wait_for("body[data-alarm-sounded]", WAIT).await.unwrap();
    let volume = s
        .execute(
            "return document.getElementById('alarm-sound').volume;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(volume, json!(0.3));
    s.close().await;
    drop(driver);
    drop((w, b));
}

/// A FLASH alarm shows as a desktop notification where the operator allowed them (issue 15,
/// item 3): the permission granted as the person at the browser would grant it, the page's
/// own `Notification` calls recorded (each still made for real), one notification per new
/// alarm, naming the message; none once the permission is withdrawn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flash_alarm_is_a_desktop_notification_where_allowed() {
    if !browser_available() {
        return;
    }
    let (_tmp, w, b, driver, s) = chief_at_washington().await;
    let settings = format!("http://{}/console/settings", w.console_addr);
    s.goto(&settings).await.unwrap();
    s.set_permission("notifications", "granted").await.unwrap();
    s.goto(&settings).await.unwrap();
    s.wait_for("#notify-state[data-state='granted']", WAIT)
        .await
        .unwrap();
    open_console(&s, &w).await;
    // Record what the page asks the browser to show; the real constructor still runs.
    s.execute(
        "window.shownNotifications = []; \
         const Real = window.Notification; \
         window.Notification = class extends Real { \
           constructor(title, options) { \
             super(title, options); \
             window.shownNotifications.push({title: title, body: options.body, \
               tag: options.tag, sticky: options.requireInteraction}); } }; \
         return true;",
        vec![],
    )
    .await
    .unwrap();
    let peer = b.client().unwrap();
    let flash = |text: &'static str| {
        let peer = &peer;
        async move {
            peer.post(
                "/api/v1/messages",
                &json!({"to": "washington", "precedence": "flash", "text": text}),
            )
            .await
            .unwrap()
        }
    };
    flash("Desktop, please").await;
    s.wait_for("body[data-notified]", WAIT).await.unwrap();
    let shown = s
        .execute("return window.shownNotifications;", vec![])
        .await
        .unwrap();
    let shown = shown.as_array().expect("a list");
    assert_eq!(shown.len(), 1, "one notification for one alarm: {shown:?}");
    let body = shown[0]["body"].as_str().unwrap_or_default();
    assert!(
        body.contains("Desktop, please"),
        "it names the message: {shown:?}"
    );
    assert_eq!(shown[0]["sticky"], json!(true), "it stays until dismissed");
    let tag = s.attribute_of("body", "data-notified").await.unwrap();
    assert_eq!(shown[0]["tag"], json!(tag));
    assert!(
        s.find(&format!("#alarm [data-alarm-id='{tag}']"))
            .await
            .is_ok(),
        "tagged with the alarm it is for: {tag}"
    );

    // Withdrawn: the next alarm sounds, and shows no notification.
    s.set_permission("notifications", "denied").await.unwrap();
    let sounded = |n: u64| format!("body[data-alarm-sounded='{n}']");
    let before: u64 = s
        .attribute_of("body", "data-alarm-sounded")
        .await
        .unwrap()
        .parse()
        .unwrap();
    flash("Quietly, please").await;
    s.wait_for(&sounded(before + 1), WAIT).await.unwrap();
    let shown = s
        .execute("return window.shownNotifications.length;", vec![])
        .await
        .unwrap();
    assert_eq!(shown, json!(1), "no notification without the permission");
    s.close().await;
    drop(driver);
    drop((w, b));
}

/// Set a date-time picker as the operator's picking would, and read the UTC echo beside it.
async fn pick(s: &Session, id: &str, local: &str) -> String {
    s.execute(
        "const i = document.getElementById(arguments[0]); i.value = arguments[1]; \
         i.dispatchEvent(new Event('input', {bubbles: true})); \
         return document.getElementById(arguments[0] + '-utc').textContent;",
        vec![json!(id), json!(local)],
    )
    .await
    .unwrap()
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// Every date-time picker echoes the picked time as UTC while it is picked, in the node's
/// zone (not the browser's, which is UTC here): New York in winter and in summer, the hour
/// a spring clock change skips and the hour an autumn one repeats (as the node resolves
/// them), and Beijing's window pickers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picked_local_times_are_echoed_in_utc_as_they_are_picked() {
    if !browser_available() {
        return;
    }
    let (tmp, w, b, driver, s) = chief_at_washington().await;
    s.goto(&format!(
        "http://{}/console/compose?to=beijing&format=cyber-incident",
        w.console_addr
    ))
    .await
    .unwrap();
    s.wait_for("#fl-observed_at-utc", WAIT).await.unwrap();
    let id = "fl-observed_at";
    for (local, utc) in [
        ("2026-01-01T05:00", "= 2026-01-01 10:00:00 UTC"),
        ("2026-07-01T05:00", "= 2026-07-01 09:00:00 UTC"),
        ("2026-12-31T22:30", "= 2027-01-01 03:30:00 UTC"),
        // 02:30 does not exist on 8 March 2026; 01:30 happens twice on 1 November.
        ("2026-03-08T02:30", "= 2026-03-08 07:30:00 UTC"),
        ("2026-11-01T01:30", "= 2026-11-01 05:30:00 UTC"),
    ] {
        assert_eq!(pick(&s, id, local).await, utc, "{local} in New York");
    }
    assert_eq!(pick(&s, id, "").await, "", "cleared");
    s.close().await;

    let s = driver.session(&tmp.path().join("profile-b")).await.unwrap();
    login(&s, &b, "chief", TEST_PASSWORD).await.unwrap();
    s.wait_for("#logout", WAIT).await.unwrap();
    s.goto(&format!(
        "http://{}/console/compose?to=washington&format=dialogue-request",
        b.console_addr
    ))
    .await
    .unwrap();
    s.wait_for("#fl-slot_1-start-utc", WAIT).await.unwrap();
    assert_eq!(
        pick(&s, "fl-slot_1-start", "2026-01-01T18:00").await,
        "= 2026-01-01 10:00:00 UTC"
    );
    assert_eq!(
        pick(&s, "fl-slot_1-end", "2026-01-02T07:15").await,
        "= 2026-01-01 23:15:00 UTC"
    );
    s.close().await;
    drop(driver);
    drop((w, b));
}
