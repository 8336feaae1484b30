//! A real browser for the dashboard's tests: Debian's `chromium`, headless,
//! driven over WebDriver by `chromedriver` (both installed by `.ci/run`). Each
//! `Browser` has its own chromedriver, port and profile; screenshots go to
//! `target/screenshots/` (or `KILN_SCREENSHOT_DIR`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use tokio::process::{Child, Command};

use super::server::free_port;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Whether the browser tests can run here; when CI requires them
/// (`KILN_REQUIRE_BROWSER=1`), their absence fails the test instead.
pub fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present && std::env::var_os("KILN_REQUIRE_BROWSER").is_some() {
        panic!("KILN_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install -y chromium chromium-driver");
    }
    if !present {
        eprintln!("skipping: no {CHROMIUM} and {CHROMEDRIVER} (apt-get install -y chromium chromium-driver)");
    }
    present
}

/// Where screenshots are saved.
pub fn screenshot_dir() -> PathBuf {
    std::env::var_os("KILN_SCREENSHOT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots"))
}

impl Browser {
    /// Starts chromedriver and a headless Chromium session at 1400×1000.
    pub async fn start() -> Browser {
        let port = free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so the Chromium it starts dies with it
            // when a failed test drops the browser unclosed.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            serde_json::json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1400,1000",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let webdriver = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&webdriver)
                .await
            {
                Ok(client) => break client,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("no WebDriver session from {CHROMEDRIVER}: {error}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
    }

    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.unwrap();
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    pub async fn find(&self, css: &str) -> Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(error) => panic!(
                "no {css} on {}: {error}\npage text:\n{}",
                self.path_now().await,
                self.body_text().await
            ),
        }
    }

    pub async fn find_all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    async fn path_now(&self) -> String {
        self.client
            .current_url()
            .await
            .map(|url| url.to_string())
            .unwrap_or_default()
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap()
    }

    /// The page's visible text.
    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Clicks the element `css` finds; if the page redrew it between finding and
    /// clicking (the log viewer redraws its rows), finds it again.
    pub async fn click(&self, css: &str) {
        for _ in 0..20 {
            match self.find(css).await.click().await {
                Ok(_) => return,
                Err(fantoccini::error::CmdError::Standard(error))
                    if error.error == fantoccini::error::ErrorStatus::StaleElementReference =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("click {css}: {error}"),
            }
        }
        panic!("click {css}: it kept being redrawn");
    }

    /// Clicks something that loads another page, and waits until it has.
    pub async fn click_to_load(&self, css: &str) {
        self.run("window.kilnOldPage = true", vec![]).await;
        self.click(css).await;
        self.until(
            &format!("the page {css} leads to"),
            Duration::from_secs(15),
            "return !window.kilnOldPage && document.readyState === 'complete'",
        )
        .await;
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.unwrap();
        field.send_keys(text).await.unwrap();
    }

    /// Runs `script` (a function body; `arguments` are `args`) and returns its value.
    pub async fn run(&self, script: &str, args: Vec<serde_json::Value>) -> serde_json::Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|error| panic!("script failed: {error}\n{script}"))
    }

    /// Waits until `script` returns something truthy, and returns it.
    pub async fn until(&self, what: &str, limit: Duration, script: &str) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let value = self.run(script, vec![]).await;
            let truthy = !matches!(
                &value,
                serde_json::Value::Null | serde_json::Value::Bool(false)
            ) && value != serde_json::json!(0)
                && value != serde_json::json!("");
            if truthy {
                return value;
            }
            if Instant::now() > deadline {
                let name = format!(
                    "failed-{}",
                    what.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
                );
                self.screenshot(&name).await;
                panic!(
                    "waited {limit:?} for {what} on {}; page text:\n{}",
                    self.path_now().await,
                    self.body_text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Signs in through the form and waits to land where it leads.
    pub async fn sign_in(&self, user: &str, password: &str) {
        self.fill("#username", user).await;
        self.fill("#password", password).await;
        self.click_to_load("form.signin button[type=submit]").await;
    }

    /// Makes the window `width` × `height` CSS pixels.
    pub async fn resize(&self, width: u32, height: u32) {
        self.client.set_window_size(width, height).await.unwrap();
    }

    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.unwrap();
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    pub async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(pid) = self.driver.id() {
            let group = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
    }
}
