//! A headless Chromium driven through the Chrome DevTools Protocol (CDP), for the console's
//! browser test: a real browser, launched per test and killed (with all its processes) when
//! dropped. There is no fallback: when Chromium cannot be found or started, the test fails and
//! says why.

#![allow(dead_code)]

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};
use tungstenite::{Message, WebSocket};

/// How long a condition in the page may take to hold.
pub const WAIT: Duration = Duration::from_secs(20);
/// How long Chromium may take to start.
const START: Duration = Duration::from_secs(30);
/// How long one DevTools read may wait; longer than [`WAIT`], since a wait is one call.
const READ: Duration = Duration::from_secs(45);

/// The browser binary: `MIST_TEST_CHROMIUM`, else the first of the usual names on `PATH`.
fn find_chromium() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("MIST_TEST_CHROMIUM") {
        return Ok(PathBuf::from(p));
    }
    let names = [
        "chromium",
        "chromium-browser",
        "google-chrome-stable",
        "google-chrome",
    ];
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in names {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "no Chromium found (looked for {} on PATH, and MIST_TEST_CHROMIUM is not set); \
         scripts/test installs Debian's chromium package",
        names.join(", ")
    ))
}

/// A running headless Chromium and its DevTools connection.
pub struct Chromium {
    cdp: Cdp,
    process: Process,
    /// The last lines Chromium wrote to stderr, for failure messages.
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Chromium {
    /// Starts Chromium with a fresh profile and connects to its DevTools endpoint.
    ///
    /// # Panics
    /// When Chromium cannot be found or does not start: the test must not pass without it.
    pub fn launch() -> Chromium {
        let bin =
            find_chromium().unwrap_or_else(|e| panic!("the console test needs Chromium: {e}"));
        static N: AtomicU32 = AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "mist-chromium-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("create the browser profile directory");
        let child = Command::new(&bin)
            .args([
                "--headless",
                // The test opens only mist's own page, and containers (and root) often lack
                // what the sandbox needs.
                "--no-sandbox",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-default-apps",
                "--disable-extensions",
                "--disable-sync",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--mute-audio",
                "--hide-scrollbars",
                "--force-color-profile=srgb",
                "--window-size=1280,860",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that Drop ends the browser and every helper process.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| {
                let _ = std::fs::remove_dir_all(&profile);
                panic!("cannot start Chromium ({}): {e}", bin.display())
            });
        let mut process = Process {
            child,
            profile,
            stopped: false,
        };
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let pipe = process.child.stderr.take().expect("piped stderr");
        let lines = Arc::clone(&stderr);
        thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
                let mut lines = lines.lock().unwrap();
                if lines.len() == 200 {
                    lines.remove(0);
                }
                lines.push(line);
            }
        });
        match rx.recv_timeout(START) {
            Ok(url) => Chromium {
                cdp: Cdp::connect(&url),
                process,
                stderr,
            },
            Err(e) => {
                let what = match e {
                    mpsc::RecvTimeoutError::Timeout => format!("did not open within {START:?}"),
                    mpsc::RecvTimeoutError::Disconnected => "exited first".to_string(),
                };
                let status = process.stop();
                panic!(
                    "Chromium ({}) did not start: no DevTools endpoint, it {what} (exit \
                     status {status:?}); its stderr:\n{}",
                    bin.display(),
                    stderr.lock().unwrap().join("\n")
                );
            }
        }
    }

    /// Opens a new tab on `url`, waits for its load event, and returns it.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Page<'_> {
        let target = self
            .cdp
            .call(None, "Target.createTarget", json!({"url": "about:blank"}));
        let target_id = target["targetId"]
            .as_str()
            .expect("a target id")
            .to_string();
        let attached = self.cdp.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_string();
        let mut page = Page {
            browser: self,
            session,
        };
        for method in [
            "Page.enable",
            "Runtime.enable",
            "Network.enable",
            // Key events go to the focused page.
            "Page.bringToFront",
        ] {
            page.call(method, json!({}));
        }
        page.viewport(width, height, false);
        // Workers the page starts (the console's socket) wait until watched; see Cdp::event.
        page.call(
            "Target.setAutoAttach",
            json!({ "autoAttach": true, "waitForDebuggerOnStart": true, "flatten": true }),
        );
        page.call("Page.navigate", json!({ "url": url }));
        page.wait_event("Page.loadEventFired");
        page
    }

    /// The last lines Chromium wrote to stderr.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }
}

/// The browser's processes and profile directory; dropping it ends them all and removes it.
struct Process {
    child: Child,
    profile: PathBuf,
    stopped: bool,
}

impl Process {
    /// Kills the browser's process group (the group it leads, so every helper process too),
    /// reaps it and removes its profile.
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        if std::mem::replace(&mut self.stopped, true) {
            return None;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory effects; the group is the one spawned above, whose
            // id is the browser's pid (process_group(0)).
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        let status = self.child.wait().ok();
        let _ = std::fs::remove_dir_all(&self.profile);
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A DevTools WebSocket: commands with ids, and the events that arrive meanwhile.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    events: Vec<Value>,
    /// Sessions of targets a page started (its workers), with the page's session.
    children: Vec<(String, String)>,
}

impl Cdp {
    fn connect(url: &str) -> Cdp {
        let host = url
            .strip_prefix("ws://")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("unexpected DevTools URL {url}"));
        let stream = TcpStream::connect(host).expect("connect to DevTools");
        stream.set_read_timeout(Some(READ)).unwrap();
        stream.set_write_timeout(Some(READ)).unwrap();
        let (ws, _) = tungstenite::client(url, stream).expect("DevTools WebSocket handshake");
        Cdp {
            ws,
            next_id: 1,
            events: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Sends a command (to a page when `session` is given); returns its id.
    fn send(&mut self, session: Option<&str>, method: &str, params: Value) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .unwrap_or_else(|e| panic!("DevTools: cannot send {method}: {e}"));
        id
    }

    /// Sends a command and returns its result, keeping the events that come meanwhile.
    fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.send(session, method, params);
        loop {
            let v = self.read(method);
            if v["id"] == json!(id) {
                if let Some(err) = v.get("error") {
                    panic!("DevTools: {method} failed: {err}");
                }
                return v["result"].clone();
            }
            if v.get("method").is_some() {
                self.event(v);
            }
        }
    }

    /// Keeps an event. A worker the page started waits for us: watch its network and its
    /// errors too, then let it run (the replies are not awaited; nothing depends on them).
    fn event(&mut self, v: Value) {
        if v["method"] == json!("Target.attachedToTarget") {
            let child = v["params"]["sessionId"].as_str().unwrap_or("").to_string();
            let parent = v["sessionId"].as_str().unwrap_or("").to_string();
            for method in [
                "Network.enable",
                "Runtime.enable",
                "Runtime.runIfWaitingForDebugger",
            ] {
                self.send(Some(&child), method, json!({}));
            }
            self.children.push((child, parent));
        }
        self.events.push(v);
    }

    /// Whether an event came from `session` or from a target it started.
    fn from(&self, event: &Value, session: &str) -> bool {
        let Some(s) = event["sessionId"].as_str() else {
            return false;
        };
        s == session || self.children.iter().any(|(c, p)| c == s && p == session)
    }

    fn read(&mut self, waiting_for: &str) -> Value {
        loop {
            let msg = self.ws.read().unwrap_or_else(|e| {
                panic!("DevTools: no answer while waiting for {waiting_for}: {e}")
            });
            if let Message::Text(t) = msg {
                return serde_json::from_str(t.as_str()).expect("DevTools sends JSON");
            }
        }
    }
}

/// One tab, attached through a flat DevTools session.
pub struct Page<'a> {
    browser: &'a mut Chromium,
    session: String,
}

impl Page<'_> {
    /// Sends a command to this page.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        let session = self.session.clone();
        self.browser.cdp.call(Some(&session), method, params)
    }

    /// Sends a command to the (first) worker this page started.
    pub fn worker_call(&mut self, method: &str, params: Value) -> Value {
        let worker = self
            .browser
            .cdp
            .children
            .iter()
            .find(|(_, parent)| *parent == self.session)
            .map(|(child, _)| child.clone())
            .expect("the page started a worker");
        self.browser.cdp.call(Some(&worker), method, params)
    }

    /// Waits for an event of this page (one that came already counts), and removes it.
    pub fn wait_event(&mut self, method: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(i) =
                self.browser.cdp.events.iter().position(|e| {
                    e["method"] == json!(method) && e["sessionId"] == json!(self.session)
                })
            {
                return self.browser.cdp.events.remove(i);
            }
            assert!(
                Instant::now() < deadline,
                "no {method} within {WAIT:?}; Chromium's stderr:\n{}",
                self.browser.stderr()
            );
            let v = self.browser.cdp.read(method);
            if v.get("method").is_some() {
                self.browser.cdp.event(v);
            }
        }
    }

    /// The events seen so far with this method, of this page and of the workers it started.
    pub fn events(&self, method: &str) -> Vec<Value> {
        let cdp = &self.browser.cdp;
        cdp.events
            .iter()
            .filter(|e| e["method"] == json!(method) && cdp.from(e, &self.session))
            .map(|e| e["params"].clone())
            .collect()
    }

    /// Evaluates a JavaScript expression in the page (awaiting a promise) and returns its
    /// value; a thrown exception fails the test.
    pub fn eval(&mut self, expression: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
        );
        if let Some(ex) = r.get("exceptionDetails") {
            panic!("JavaScript failed: {expression}\n{ex:#}");
        }
        r["result"]["value"].clone()
    }

    /// Waits until the JavaScript condition `cond` holds in the page, checking it every few
    /// milliseconds there (one DevTools call), for at most [`WAIT`]; fails the test with
    /// `what` and a picture of the page's state otherwise.
    pub fn wait(&mut self, what: &str, cond: &str) {
        let ms = WAIT.as_millis();
        let js = format!(
            "new Promise((resolve) => {{
               const end = Date.now() + {ms};
               const check = () => {{
                 let ok = false;
                 try {{ ok = Boolean((() => ({cond}))()); }} catch (e) {{}}
                 if (ok) resolve(true);
                 else if (Date.now() > end) resolve(false);
                 else setTimeout(check, 20);
               }};
               check();
             }})"
        );
        if self.eval(&js) != json!(true) {
            let state = self.eval(
                "JSON.stringify({
                   state: document.getElementById('state')?.textContent,
                   subs: [...document.querySelectorAll('#subs li')].map((li) => li.dataset.tags),
                   notices: [...document.querySelectorAll('#notices li')].map((li) => li.textContent),
                   rows: [...document.querySelectorAll('#rows .msg')].slice(0, 8).map((r) => r.textContent),
                 }, null, 1)",
            );
            panic!(
                "waited {WAIT:?} for: {what}\n(condition: {cond})\npage: {}",
                state.as_str().unwrap_or("?")
            );
        }
    }

    /// Presses and releases one key, as the keyboard would.
    pub fn key(&mut self, key: &str, code: &str, key_code: u32, text: Option<&str>) {
        let mut down = json!({
            "type": "keyDown", "key": key, "code": code,
            "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code,
        });
        if let Some(t) = text {
            down["text"] = json!(t);
        }
        self.call("Input.dispatchKeyEvent", down);
        self.call(
            "Input.dispatchKeyEvent",
            json!({ "type": "keyUp", "key": key, "code": code,
                    "windowsVirtualKeyCode": key_code, "nativeVirtualKeyCode": key_code }),
        );
    }

    /// Types text into the focused element.
    pub fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text }));
    }

    /// Sets the viewport (CSS pixels); `mobile` emulates a phone.
    pub fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        );
    }

    /// Makes the page see `prefers-color-scheme: light` or `dark`.
    pub fn color_scheme(&mut self, scheme: &str) {
        self.call(
            "Emulation.setEmulatedMedia",
            json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
        );
    }

    /// Saves a PNG of the viewport at `path`.
    pub fn screenshot(&mut self, path: &Path) {
        let r = self.call("Page.captureScreenshot", json!({ "format": "png" }));
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG image");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("create the screenshot directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

/// Standard base64 (with or without padding), as DevTools sends images.
fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        u32::from(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: byte {c}"),
        })
    };
    let digits: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c) << (18 - 6 * i);
        }
        let bytes = chunk.len() * 6 / 8;
        out.extend_from_slice(&n.to_be_bytes()[1..=bytes]);
    }
    out
}

#[test]
fn base64_decodes_padded_and_unpadded_input() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGVsbG8"), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
    assert_eq!(base64_decode(""), b"");
}
