//! A real browser (issue 15): headless Chromium loads our test page (tests/browser/, built with
//! npm from the transport scitq's UI uses and stubs generated from proto/taskqueue.proto) through
//! haproxy (TLS, h2 by ALPN, round robin per request) in front of two replicas running as child
//! processes on one database, serving the page from `--ui-dir` on their plain-HTTP web port. The
//! page opens /ws before logging in, logs in through /login and /fetchCookie, calls ListTasks and
//! ListWorkers over gRPC-Web (text format) and follows the stdout streams of four running tasks at
//! once while this test writes their lines through both replicas, then finishes them; the test
//! reads what the page saw over the DevTools protocol.
//!
//! Skipped, with a message, only when Chromium is not installed and TASKQUEUE_REQUIRE_BROWSER is
//! unset (scripts/test.sh sets it: CI never skips).

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    ADMIN_PASSWORD, ADMIN_USER, ChildReplica, free_port, postgres, register_worker, set_status,
    submit, task, workflow_with_step,
};
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use taskqueue::client::{self, Client};
use taskqueue::proto as pb;
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;

const CHROMIUM: &str = "/usr/bin/chromium";
const USER: &str = "browser-user";
const USER_PASSWORD: &str = "browser-secret";
const TASKS: usize = 4;
const LINES_PER_TASK: usize = 20;
const LINE_EVERY: Duration = Duration::from_millis(150);

/// Chromium's path, or `None` (after saying why) when the test is to be skipped.
fn chromium_or_skip() -> Option<PathBuf> {
    if Path::new(CHROMIUM).exists() {
        return Some(CHROMIUM.into());
    }
    let required = std::env::var_os("TASKQUEUE_REQUIRE_BROWSER").is_some_and(|v| !v.is_empty());
    assert!(
        !required,
        "TASKQUEUE_REQUIRE_BROWSER is set but {CHROMIUM} is missing: run scripts/setup.sh \
         (apt-get install chromium)"
    );
    eprintln!(
        "SKIPPED: the browser test needs Debian's chromium ({CHROMIUM} is missing; \
         scripts/setup.sh installs it; set TASKQUEUE_REQUIRE_BROWSER=1 to make this a failure)"
    );
    None
}

/// Runs tests/browser/build.sh; returns the folder to serve with `--ui-dir`.
fn build_page() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let out = Command::new("bash")
        .arg(dir.join("build.sh"))
        .stdin(Stdio::null())
        .output()
        .expect("run tests/browser/build.sh");
    assert!(
        out.status.success(),
        "tests/browser/build.sh failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dist = dir.join("dist");
    assert!(dist.join("index.html").exists() && dist.join("assets/app.js").exists());
    dist
}

/// A child process in its own process group, killed (the whole group: Chromium's helpers too)
/// on drop.
struct Process {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &'static str, mut command: Command) -> Process {
        use std::os::unix::process::CommandExt as _;
        let log = common::tempdir().join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = command
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Process { child, name, log }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(30);
        format!(
            "--- {} ({})\n{}",
            self.name,
            self.log.display(),
            lines[start..].join("\n")
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group of our own child (its pid, made a group leader).
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// haproxy terminating TLS (a fresh self-signed certificate, ALPN h2 then http/1.1) and
/// balancing every request (every HTTP/2 stream) round robin over `backends`, in HTTP/1.1.
fn start_haproxy(port: u16, backends: &[u16]) -> Process {
    let dir = common::tempdir();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    let pem = dir.join("lb.pem");
    std::fs::write(
        &pem,
        format!("{}{}", cert.cert.pem(), cert.signing_key.serialize_pem()),
    )
    .unwrap();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, p)| format!("  server replica-{i} 127.0.0.1:{p}\n"))
        .collect();
    let config = format!(
        "global\n  maxconn 1000\n\
         defaults\n  mode http\n  timeout connect 2s\n  timeout client 120s\n  \
         timeout server 120s\n  timeout tunnel 120s\n\
         frontend web\n  bind 127.0.0.1:{port} ssl crt {pem} alpn h2,http/1.1\n  \
         default_backend replicas\n\
         backend replicas\n  balance roundrobin\n{servers}",
        pem = pem.display()
    );
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(&cfg, config).unwrap();
    let haproxy = ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("haproxy is missing: run scripts/setup.sh");
    let check = Command::new(haproxy)
        .args(["-c", "-q", "-f"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "haproxy refused its configuration:\n{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut command = Command::new(haproxy);
    command.arg("-db").arg("-f").arg(&cfg);
    Process::spawn("haproxy", command)
}

async fn wait_listening(port: u16, what: &str) {
    common::wait_until(Duration::from_secs(30), what, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
}

/// A GET to Chromium's DevTools HTTP endpoint: the body, or `None` (nothing listening yet, or no
/// whole answer within 5 s). Chromium keeps the connection open whatever the request says, so
/// the body is read up to its Content-Length.
async fn devtools_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 16 * 1024];
            let n = s.read(&mut chunk).await.ok()?;
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head.lines().find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())
                        .flatten()
                });
                if length.is_some_and(|len| body.len() >= len) || n == 0 {
                    return Some(body.to_string());
                }
            }
            if n == 0 {
                return None;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

/// A DevTools protocol session on one page.
struct DevTools {
    socket: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
}

impl DevTools {
    /// Connects to the first page target of the Chromium listening on `port`.
    async fn connect(port: u16, browser: &Process) -> DevTools {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            let page = devtools_get(addr, "/json/list")
                .await
                .and_then(|body| serde_json::from_str::<Value>(&body).ok())
                .and_then(|targets| {
                    targets.as_array()?.iter().find_map(|t| {
                        (t["type"] == "page")
                            .then(|| t["webSocketDebuggerUrl"].as_str().map(str::to_string))
                            .flatten()
                    })
                });
            if let Some(url) = page {
                break url;
            }
            assert!(
                Instant::now() < deadline,
                "Chromium offered no page over DevTools within 60s\n{}",
                browser.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to the DevTools page socket");
        DevTools { socket, next_id: 1 }
    }

    /// Sends a command and returns its `result` (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let command = json!({"id": id, "method": method, "params": params}).to_string();
        self.socket.send(Message::text(command)).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(message) = self.socket.next().await {
                let Message::Text(text) = message.expect("DevTools socket") else {
                    continue;
                };
                let value: Value = serde_json::from_str(text.as_str()).unwrap();
                if value["id"] == id {
                    return value;
                }
            }
            panic!("the DevTools socket closed");
        })
        .await
        .unwrap_or_else(|_| panic!("no answer to {method} within 30s"));
        assert!(
            answer.get("error").is_none(),
            "{method} failed: {}",
            answer["error"]
        );
        answer["result"].clone()
    }

    /// Evaluates `expression` (which must produce a JSON text) in the page; returns it parsed.
    async fn eval_json(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expression, "returnByValue": true}),
            )
            .await;
        let text = result["result"]["value"].as_str().unwrap_or("null");
        serde_json::from_str(text).unwrap_or(Value::Null)
    }

    /// The page's `{progress, result, title}`.
    async fn state(&mut self) -> Value {
        self.eval_json(
            "JSON.stringify({progress: window.__progress || null, \
             result: window.__result || null, title: document.title})",
        )
        .await
    }

    /// Saves a screenshot of the page; returns its path.
    async fn screenshot(&mut self) -> PathBuf {
        use base64::Engine as _;
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap_or_default())
            .unwrap_or_default();
        let path = common::tempdir().join("page.png");
        std::fs::write(&path, png).unwrap();
        path
    }
}

/// Headless Chromium on `url` with a fresh profile, DevTools on `devtools_port`.
fn start_chromium(binary: &Path, url: &str, devtools_port: u16) -> Process {
    let profile = common::tempdir().join("chromium-profile");
    let mut command = Command::new(binary);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--remote-debugging-port={devtools_port}"))
        .arg(url)
        // Chromium wants a writable home for its caches.
        .env("HOME", common::tempdir());
    Process::spawn("chromium", command)
}

async fn logged_in(replica: &ChildReplica, user: &str, password: &str) -> Client {
    let token = client::with_token(replica.channel(), None)
        .unwrap()
        .login(pb::LoginRequest {
            username: user.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token;
    client::with_token(replica.channel(), Some(&token)).unwrap()
}

/// Writes `LINES_PER_TASK` stdout lines of `task_id` in one SendTaskLogs stream, one every
/// `LINE_EVERY`.
async fn write_lines(mut worker: Client, task_id: i32) {
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let call = tokio::spawn(async move {
        worker
            .send_task_logs(ReceiverStream::new(rx))
            .await
            .map(|_| ())
    });
    for n in 0..LINES_PER_TASK {
        tx.send(pb::TaskLog {
            task_id,
            log_type: "stdout".into(),
            log_text: line(task_id, n),
        })
        .await
        .unwrap();
        tokio::time::sleep(LINE_EVERY).await;
    }
    drop(tx);
    call.await.unwrap().expect("SendTaskLogs");
}

/// A replica's web requests so far: (all kinds, gRPC-Web), from its /metrics.
async fn web_requests(replica: &ChildReplica) -> (f64, f64) {
    let text = replica
        .scrape(Duration::from_secs(5))
        .await
        .expect("the replica's /metrics");
    let mut counts = (0.0, 0.0);
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("taskqueue_web_requests_total{") else {
            continue;
        };
        let value: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
        counts.0 += value;
        if rest.contains("kind=\"grpc-web\"") {
            counts.1 += value;
        }
    }
    counts
}

fn line(task_id: i32, n: usize) -> String {
    format!("task {task_id} line {n}")
}

/// Polls the page until `done` holds for its state (or it failed), for at most `timeout`.
async fn wait_page(
    devtools: &mut DevTools,
    timeout: Duration,
    what: &str,
    done: impl Fn(&Value) -> bool,
    diagnostics: &dyn Fn() -> String,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let state = devtools.state().await;
        if done(&state) {
            return state;
        }
        if state["title"].as_str().unwrap_or("").starts_with("error") || Instant::now() > deadline {
            let shot = devtools.screenshot().await;
            panic!(
                "the page did not reach {what} (screenshot {}): {state:#}\n{}",
                shot.display(),
                diagnostics()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_test_page_works_through_haproxy_in_front_of_two_replicas() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let ui_dir = build_page();

    // Two replicas on one database, their web ports in plain HTTP behind haproxy.
    let url = postgres().await.fresh_db().await;
    let web_ports = [free_port(), free_port()];
    let mut replicas: Vec<ChildReplica> = ["web-1", "web-2"]
        .iter()
        .zip(web_ports)
        .map(|(name, web)| {
            let extra = [
                "--https-port".to_string(),
                web.to_string(),
                "--ui-dir".to_string(),
                ui_dir.display().to_string(),
            ];
            ChildReplica::spawn(name, &url, &extra)
        })
        .collect();
    for r in &mut replicas {
        r.wait_serving().await;
    }
    for port in web_ports {
        wait_listening(port, "a replica's web port").await;
    }
    let lb_port = free_port();
    let haproxy = start_haproxy(lb_port, &web_ports);
    wait_listening(lb_port, "haproxy").await;

    // A user's workflow, four of their tasks running on a worker.
    let mut admin = logged_in(&replicas[0], ADMIN_USER, ADMIN_PASSWORD).await;
    admin
        .create_user(pb::CreateUserRequest {
            username: USER.into(),
            password: USER_PASSWORD.into(),
            email: format!("{USER}@example.org"),
            is_admin: false,
        })
        .await
        .unwrap();
    let mut user = logged_in(&replicas[1], USER, USER_PASSWORD).await;
    let (_, step) = workflow_with_step(&mut user, "browser-wf", "browser-step").await;
    let mut task_ids = Vec::new();
    for n in 0..TASKS {
        let mut request = task(&format!("echo browser {n}"));
        request.step_id = Some(step);
        task_ids.push(submit(&mut user, request).await);
    }
    let mut worker = replicas[0].worker();
    let worker_id =
        register_worker(&mut worker, "browser-worker", TASKS as i32, 0, Some(step)).await;
    let mut assigned = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while assigned.len() < TASKS {
        assert!(
            Instant::now() < deadline,
            "tasks assigned within 30s: {assigned:?}"
        );
        let tasks = common::ping(&mut worker, worker_id).await.tasks;
        assigned.extend(tasks.into_iter().map(|t| t.task_id));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &t in &task_ids {
        set_status(&mut worker, t, "R").await;
    }

    let ids: Vec<String> = task_ids.iter().map(i32::to_string).collect();
    let page_url = format!(
        "https://127.0.0.1:{lb_port}/?user={USER}&password={USER_PASSWORD}&tasks={}",
        ids.join(",")
    );
    let devtools_port = free_port();
    let browser = start_chromium(&chromium, &page_url, devtools_port);
    let mut devtools = DevTools::connect(devtools_port, &browser).await;
    let diagnostics = || {
        let mut out = vec![browser.log_tail(), haproxy.log_tail()];
        out.extend(replicas.iter().map(|r| {
            let text = r.log_text();
            let lines: Vec<&str> = text.lines().collect();
            format!(
                "--- {}\n{}",
                r.name,
                lines[lines.len().saturating_sub(30)..].join("\n")
            )
        }));
        out.join("\n")
    };

    // Logged in, the socket reconnected with the cookie, the streams being read: now the tasks
    // write their lines (through both replicas) and finish.
    wait_page(
        &mut devtools,
        Duration::from_secs(60),
        "its streaming phase with /ws open",
        |s| s["progress"]["phase"] == "streaming" && s["progress"]["wsOpenAfterLogin"] == true,
        &diagnostics,
    )
    .await;
    let writers: Vec<_> = task_ids
        .iter()
        .enumerate()
        .map(|(i, &t)| tokio::spawn(write_lines(replicas[i % 2].worker(), t)))
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let mut finisher = replicas[1].worker();
    for &t in &task_ids {
        set_status(&mut finisher, t, "S").await;
    }
    let finished = Instant::now();

    let state = wait_page(
        &mut devtools,
        Duration::from_secs(90),
        "done",
        |s| s["title"] == "done",
        &diagnostics,
    )
    .await;
    let waited = finished.elapsed();
    let shot = devtools.screenshot().await;
    let _ = devtools.call("Browser.close", json!({})).await;
    let r = &state["result"];
    eprintln!(
        "browser: done {:.2}s after the last task finished; screenshot {}",
        waited.as_secs_f64(),
        shot.display()
    );

    // Login and the cookie's token.
    assert_eq!(r["login"]["status"], 200, "{r:#}");
    assert_eq!(r["fetchCookie"]["status"], 200, "{r:#}");
    assert_eq!(r["tokenParts"], 3, "a JWT: header.payload.signature");
    assert_eq!(
        r["claims"]["username"], USER,
        "the UI reads its user from atob(payload): {r:#}"
    );
    assert!(r["claims"]["userId"].is_i64(), "{r:#}");
    assert_eq!(r["cookieVisible"], false, "the session cookie is HttpOnly");

    // ListTasks and ListWorkers over gRPC-Web.
    let listed: BTreeSet<i64> = r["listTasks"]
        .as_array()
        .expect("ListTasks answered")
        .iter()
        .filter_map(|t| t["taskId"].as_i64())
        .collect();
    for &t in &task_ids {
        assert!(
            listed.contains(&(t as i64)),
            "ListTasks lacks task {t}: {listed:?}"
        );
    }
    let workers = r["listWorkers"].as_array().expect("ListWorkers answered");
    assert!(
        workers
            .iter()
            .any(|w| w["workerId"] == worker_id && w["name"] == "browser-worker"),
        "ListWorkers lacks the worker: {workers:?}"
    );

    // Four concurrent log streams: every line in order, each ended cleanly.
    let streams = r["streams"].as_array().expect("streams recorded");
    assert_eq!(streams.len(), TASKS);
    for (stream, &t) in streams.iter().zip(&task_ids) {
        let expected: Vec<String> = (0..LINES_PER_TASK).map(|n| line(t, n)).collect();
        let got: Vec<String> = stream["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(got, expected, "task {t}'s stream: {stream:#}");
        assert_eq!(
            stream["error"],
            Value::Null,
            "task {t}'s stream: {stream:#}"
        );
        assert_eq!(stream["ended"], true, "task {t}'s stream: {stream:#}");
        assert_eq!(stream["status"], "OK", "task {t}'s stream: {stream:#}");
        assert_eq!(stream["foreign"], 0, "task {t}'s stream: {stream:#}");
        eprintln!(
            "browser: task {t}'s stream read {} lines in {} ms",
            got.len(),
            stream["ms"]
        );
    }

    // /ws: refused before login (no cookie), open after it, task/status events of our tasks.
    let ws = &r["ws"];
    let attempts = ws["attempts"].as_array().unwrap();
    let first = &attempts[0];
    assert_eq!(first["afterLogin"], false, "{ws:#}");
    assert_eq!(
        first["opened"], false,
        "the upgrade without a cookie is refused: {ws:#}"
    );
    assert!(
        attempts
            .iter()
            .any(|a| a["afterLogin"] == true && a["opened"] == true),
        "the socket reconnected after login: {ws:#}"
    );
    let ours: BTreeSet<i64> = task_ids.iter().map(|&t| t as i64).collect();
    let status_events: Vec<&Value> = ws["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| (m["type"] == "task" && m["action"] == "status") || m["type"] == "task/status")
        .collect();
    assert!(
        status_events.iter().any(|m| m["payload"]["taskId"]
            .as_i64()
            .is_some_and(|t| ours.contains(&t))),
        "no task/status event of our tasks over /ws: {ws:#}"
    );
    assert!(
        ws["pongs"].as_i64().unwrap_or(0) >= 1,
        "ping answered: {ws:#}"
    );

    // HTTP/2 all the way from the browser to haproxy.
    let origin = format!("https://127.0.0.1:{lb_port}/");
    let entries: Vec<&Value> = r["protocols"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["name"].as_str().is_some_and(|n| n.starts_with(&origin)))
        .collect();
    assert!(
        entries.iter().any(|e| e["type"] == "navigation"),
        "no navigation entry: {entries:?}"
    );
    assert!(
        entries.iter().any(|e| e["name"]
            .as_str()
            .is_some_and(|n| n.contains("/taskqueue.TaskQueue/"))),
        "no gRPC-Web entry: {entries:?}"
    );
    for e in &entries {
        assert_eq!(e["protocol"], "h2", "{e}");
    }
    eprintln!(
        "browser: {} requests over h2, {} /ws attempts, {} task/status events",
        entries.len(),
        attempts.len(),
        status_events.len()
    );

    // Round robin: both replicas served the page's requests.
    for replica in &replicas {
        let (all, grpc_web) = web_requests(replica).await;
        eprintln!(
            "browser: {} served {all} web requests, {grpc_web} of them gRPC-Web",
            replica.name
        );
        assert!(all > 0.0, "{} served nothing through haproxy", replica.name);
    }
    drop(browser);
    drop(haproxy);
}
