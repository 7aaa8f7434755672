//! Replicas as child processes of the `taskqueue` binary (for tests that kill, freeze or signal a
//! whole process), and the leadership they hold.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use taskqueue::client::{self, Client, Target};
use tonic::transport::Channel;

use super::{
    ADMIN_PASSWORD, ADMIN_USER, WORKER_TOKEN, free_port, metric_value, postgres, tempdir,
    try_http_get,
};

/// A replica running as a child process of the `taskqueue` binary, for tests that kill, freeze
/// or signal a whole process (SIGKILL, SIGSTOP, SIGTERM). Its log goes to `log`; killed on drop.
pub struct ChildReplica {
    child: Option<Child>,
    pub name: String,
    pub port: u16,
    pub metrics_port: u16,
    pub log: PathBuf,
}

impl ChildReplica {
    /// Starts `taskqueue serve` on free loopback ports against `database_url`, with the test admin
    /// password and worker token, plus `extra` flags (e.g. `--etcd-endpoints`).
    pub fn spawn(name: &str, database_url: &str, extra: &[String]) -> ChildReplica {
        let port = free_port();
        let metrics_port = free_port();
        let dir = tempdir();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_taskqueue"));
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env(
                "TASKQUEUE_LOG",
                "info,taskqueue=debug,h2=warn,tower=warn,hyper=warn",
            )
            .arg("serve")
            .args(["--database-url", database_url])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .arg("--data-dir")
            .arg(&dir)
            .args(["--worker-token", WORKER_TOKEN])
            .args(["--admin-password", ADMIN_PASSWORD])
            .args(["--replica-name", name])
            .args(["--shutdown-grace", "5s"])
            .args(["--db-pool-size", "5", "--batch-loops", "1"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd.spawn().expect("start the taskqueue binary");
        ChildReplica {
            child: Some(child),
            name: name.to_string(),
            port,
            metrics_port,
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn channel(&self) -> Channel {
        Target::new(self.url()).channel().unwrap()
    }

    /// A client authenticated with the worker token.
    pub fn worker(&self) -> Client {
        client::with_token(self.channel(), Some(WORKER_TOKEN)).unwrap()
    }

    /// A client logged in as the initial admin.
    pub async fn admin(&self) -> Client {
        let token = client::with_token(self.channel(), None)
            .unwrap()
            .login(taskqueue::proto::LoginRequest {
                username: ADMIN_USER.into(),
                password: ADMIN_PASSWORD.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .token;
        client::with_token(self.channel(), Some(&token)).unwrap()
    }

    /// The replica's /metrics text: this process' alone, unlike an in-process replica's (the
    /// metrics recorder is process-wide, shared by every test of the binary).
    pub async fn metrics(&self) -> String {
        self.scrape(Duration::from_secs(10))
            .await
            .expect("the child replica serves /metrics")
    }

    /// Waits until the replica reports SERVING on its health service.
    pub async fn wait_serving(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut health = tonic_health::pb::health_client::HealthClient::new(self.channel());
            let check = health.check(tonic_health::pb::HealthCheckRequest {
                service: "taskqueue.TaskQueue".into(),
            });
            let serving = tokio::time::timeout(Duration::from_secs(2), check)
                .await
                .ok()
                .and_then(|r| r.ok())
                .is_some_and(|r| {
                    r.into_inner().status
                        == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
                });
            if serving {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "replica {} exited ({status}):\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "replica {} did not serve within 60s:\n{}",
                self.name,
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The replica's /metrics text, or `None` if it does not answer within `timeout` (frozen,
    /// dead).
    pub async fn scrape(&self, timeout: Duration) -> Option<String> {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.metrics_port).parse().unwrap();
        tokio::time::timeout(timeout, try_http_get(addr, "/metrics"))
            .await
            .ok()
            .flatten()
    }

    /// The value of an unlabelled metric (e.g. `taskqueue_leader`), if the replica answers.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.scrape(Duration::from_millis(500)).await?;
        metric_value(&text, name)
    }

    /// True when the replica answers and reports `taskqueue_leader 1`.
    pub async fn is_leader(&self) -> bool {
        self.metric("taskqueue_leader").await == Some(1.0)
    }

    /// Sends `signal` (libc::SIGSTOP, SIGCONT, SIGTERM …) to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits (at most `timeout`) for the process to exit; returns its exit code.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildReplica {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A frozen process must be resumed to die cleanly.
            // SAFETY: kill(2) on our own child process.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
        }
        self.kill();
    }
}

/// Starts `taskqueue serve` as `names` on one database (see [`ChildReplica::spawn`]) and waits
/// until each serves.
pub async fn start_replicas(url: &str, names: &[&str], extra: &[String]) -> Vec<ChildReplica> {
    let mut replicas: Vec<ChildReplica> = names
        .iter()
        .map(|n| ChildReplica::spawn(n, url, extra))
        .collect();
    for r in &mut replicas {
        r.wait_serving().await;
    }
    replicas
}

/// Waits until the database records a term newer than `epoch`; returns it.
pub async fn wait_new_term(url: &str, epoch: i64, timeout: Duration) -> (i64, String) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((e, holder)) = office(url).await
            && e > epoch
        {
            return (e, holder);
        }
        assert!(
            Instant::now() < deadline,
            "no new term after {timeout:?} (still {epoch})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The recorded leadership term of a database: (epoch, holder), if any leader took office.
pub async fn office(database_url: &str) -> Option<(i64, String)> {
    let client = postgres().await.connect(database_url).await;
    client
        .query_opt("SELECT epoch, holder FROM cluster_leader WHERE id = 1", &[])
        .await
        .unwrap()
        .map(|r| (r.get(0), r.get(1)))
}

/// Indexes of the replicas that answer and report `taskqueue_leader 1`.
pub async fn leaders(replicas: &[ChildReplica]) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if r.is_running() && r.is_leader().await {
            out.push(i);
        }
    }
    out
}

/// Waits until exactly one replica reports itself leader and the database records it as the
/// holder; returns its index and epoch.
pub async fn wait_one_leader(
    database_url: &str,
    replicas: &[ChildReplica],
    timeout: Duration,
) -> (usize, i64) {
    let deadline = Instant::now() + timeout;
    loop {
        let found = leaders(replicas).await;
        if let ([i], Some((epoch, holder))) = (found.as_slice(), office(database_url).await)
            && holder == replicas[*i].name
        {
            return (*i, epoch);
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = replicas
                .iter()
                .map(|r| format!("--- {} ---\n{}", r.name, r.log_text()))
                .collect();
            panic!(
                "no single leader after {timeout:?}: leaders {found:?}, office {:?}\n{}",
                office(database_url).await,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
