//! A small W3C WebDriver client over plain HTTP to a local `chromedriver`, for the console's
//! browser tests and `detente screenshots`. The protocol is a handful of JSON requests; a
//! client of our own keeps TLS stacks (and OpenSSL) out of the dependency graph.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

use crate::harness::free_port;
use crate::Failure;

/// The key W3C WebDriver uses for element references.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long one WebDriver command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Where Debian puts Chromium and its driver (overridable for other systems).
pub fn chromium_paths() -> (PathBuf, PathBuf) {
    let browser = std::env::var_os("DETENTE_CHROMIUM")
        .map_or_else(|| PathBuf::from("/usr/bin/chromium"), PathBuf::from);
    let driver = std::env::var_os("DETENTE_CHROMEDRIVER")
        .map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from);
    (browser, driver)
}

/// A running `chromedriver` on a free loopback port; killed on drop.
pub struct Driver {
    pub url: String,
    browser: PathBuf,
    child: Child,
    http: reqwest::Client,
}

impl Driver {
    pub async fn start() -> Result<Driver, Failure> {
        let (browser, driver) = chromium_paths();
        for path in [&browser, &driver] {
            if !path.exists() {
                return Err(Failure::new(format!("{} is not installed", path.display()))
                    .hint("install it with: apt-get install -y --no-install-recommends chromium chromium-driver"));
            }
        }
        let port = free_port()?;
        let child = Command::new(&driver)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Failure::new(format!("cannot start {}: {e}", driver.display())))?;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(|e| Failure::new(e.to_string()))?;
        let url = format!("http://127.0.0.1:{port}");
        let d = Driver {
            url,
            browser,
            child,
            http,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = d.http.get(format!("{}/status", d.url)).send().await {
                if let Ok(v) = r.json::<Value>().await {
                    if v["value"]["ready"] == true {
                        return Ok(d);
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(Failure::new("chromedriver did not become ready in 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A new headless browser with its own profile in `profile`.
    pub async fn session(&self, profile: &Path) -> Result<Session, Failure> {
        let args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--window-size=1280,900".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": self.browser, "args": args},
        }}});
        let v = call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}/session", self.url),
            Some(caps),
        )
        .await?;
        let id = v["sessionId"]
            .as_str()
            .ok_or_else(|| Failure::new(format!("no session id in {v}")))?;
        Ok(Session {
            base: format!("{}/session/{id}", self.url),
            http: self.http.clone(),
        })
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> Result<Value, Failure> {
    let mut request = http.request(method, url);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request
        .send()
        .await
        .map_err(|e| Failure::new(format!("webdriver {url}: {e}")))?;
    let status = response.status();
    let v: Value = response
        .json()
        .await
        .map_err(|e| Failure::new(format!("webdriver {url}: {e}")))?;
    if !status.is_success() {
        return Err(Failure::new(format!(
            "webdriver {url}: {} {}",
            v["value"]["error"], v["value"]["message"]
        )));
    }
    Ok(v["value"].clone())
}

/// One browser.
pub struct Session {
    base: String,
    http: reqwest::Client,
}

/// An element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

impl Session {
    async fn post(&self, path: &str, body: Value) -> Result<Value, Failure> {
        call(
            &self.http,
            reqwest::Method::POST,
            &format!("{}{path}", self.base),
            Some(body),
        )
        .await
    }

    async fn get(&self, path: &str) -> Result<Value, Failure> {
        call(
            &self.http,
            reqwest::Method::GET,
            &format!("{}{path}", self.base),
            None,
        )
        .await
    }

    pub async fn goto(&self, url: &str) -> Result<(), Failure> {
        self.post("/url", json!({"url": url})).await.map(drop)
    }

    pub async fn current_url(&self) -> Result<String, Failure> {
        Ok(self.get("/url").await?.as_str().unwrap_or("").to_string())
    }

    /// All elements matching a CSS selector (none is not an error).
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, Failure> {
        let v = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await?;
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT_KEY].as_str())
                    .map(|s| Element(s.to_string()))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub async fn find(&self, css: &str) -> Result<Element, Failure> {
        self.find_all(css)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Failure::new(format!("no element matches {css:?}")))
    }

    /// Wait until an element matching `css` exists, polling; fail after `timeout`.
    pub async fn wait_for(&self, css: &str, timeout: Duration) -> Result<Element, Failure> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.find_all(css).await?.into_iter().next() {
                return Ok(e);
            }
            if Instant::now() > deadline {
                let url = self.current_url().await.unwrap_or_default();
                let source = self
                    .execute("return document.documentElement.outerHTML;", vec![])
                    .await
                    .map(|v| {
                        v.as_str()
                            .unwrap_or("")
                            .chars()
                            .take(2000)
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                return Err(Failure::new(format!(
                    "no element matches {css:?} after {timeout:?} on {url}; the page: {source}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn click(&self, e: &Element) -> Result<(), Failure> {
        self.post(&format!("/element/{}/click", e.0), json!({}))
            .await
            .map(drop)
    }

    /// A real mouse click `dx`, `dy` CSS pixels from the centre of `e` (W3C actions: the
    /// browser's own pointer, so the page sees a trusted event at that spot).
    pub async fn click_at(&self, e: &Element, dx: i64, dy: i64) -> Result<(), Failure> {
        let origin = json!({ ELEMENT_KEY: e.0 });
        let actions = json!({"actions": [{
            "type": "pointer",
            "id": "mouse",
            "parameters": {"pointerType": "mouse"},
            "actions": [
                {"type": "pointerMove", "origin": origin, "x": dx, "y": dy, "duration": 0},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0},
            ],
        }]});
        self.post("/actions", actions).await?;
        call(
            &self.http,
            reqwest::Method::DELETE,
            &format!("{}/actions", self.base),
            None,
        )
        .await
        .map(drop)
    }

    pub async fn clear(&self, e: &Element) -> Result<(), Failure> {
        self.post(&format!("/element/{}/clear", e.0), json!({}))
            .await
            .map(drop)
    }

    pub async fn type_text(&self, e: &Element, text: &str) -> Result<(), Failure> {
        self.post(&format!("/element/{}/value", e.0), json!({"text": text}))
            .await
            .map(drop)
    }

    pub async fn text(&self, e: &Element) -> Result<String, Failure> {
        Ok(self
            .get(&format!("/element/{}/text", e.0))
            .await?
            .as_str()
            .unwrap_or("")
            .to_string())
    }

    pub async fn attribute(&self, e: &Element, name: &str) -> Result<Option<String>, Failure> {
        Ok(self
            .get(&format!("/element/{}/attribute/{name}", e.0))
            .await?
            .as_str()
            .map(str::to_string))
    }

    /// Set a permission for the current page's origin, as the person at the browser would
    /// answer its prompt (the W3C Permissions extension, `POST /permissions`): e.g.
    /// `("notifications", "granted")`.
    pub async fn set_permission(&self, name: &str, state: &str) -> Result<(), Failure> {
        self.post(
            "/permissions",
            json!({"descriptor": {"name": name}, "state": state}),
        )
        .await
        .map(drop)
    }

    /// Run a script in the page and return its result.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, Failure> {
        self.post("/execute/sync", json!({"script": script, "args": args}))
            .await
    }

    /// The text of the first element matching `css`, read in one step (live regions replace
    /// their elements, so a reference taken earlier may be stale).
    pub async fn text_of(&self, css: &str) -> Result<String, Failure> {
        let v = self
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(css)],
            )
            .await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| Failure::new(format!("no element matches {css:?}")))
    }

    /// An attribute of the first element matching `css`, read in one step.
    pub async fn attribute_of(&self, css: &str, name: &str) -> Result<String, Failure> {
        let v = self
            .execute(
                "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(css), json!(name)],
            )
            .await?;
        v.as_str()
            .map(str::to_string)
            .ok_or_else(|| Failure::new(format!("no {name} on {css:?}")))
    }

    /// Choose the `<option>` with this value in a `<select>`.
    pub async fn select(&self, css: &str, value: &str) -> Result<(), Failure> {
        let option = self
            .find(&format!("{css} option[value=\"{value}\"]"))
            .await?;
        self.click(&option).await
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Result<Vec<u8>, Failure> {
        let v = self.get("/screenshot").await?;
        base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or(""))
            .map_err(|e| Failure::new(format!("screenshot: {e}")))
    }

    pub async fn close(self) {
        let _ = call(&self.http, reqwest::Method::DELETE, &self.base, None).await;
    }
}
