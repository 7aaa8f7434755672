//! deploy/local end to end: `up.sh` starts PostgreSQL, etcd, three replicas, haproxy and Prometheus
//! on loopback; the fleet simulator drives a workload through the load balancer; every replica
//! served pings, Prometheus scraped each of them with the alert rules loaded, exactly one replica
//! leads; then the leader replica is killed behind the load balancer while workers drain a queue,
//! and no task is lost. `down.sh --purge` stops everything (also when the test fails).

use crate::common;
use common::submit;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use taskqueue::client::{self, Target};
use taskqueue::proto as pb;
use tokio::process::Command;

/// GET on loopback; None when nothing answers (a killed replica).
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(request.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(3), fetch)
        .await
        .ok()
        .flatten()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/local")
        .join(name)
}

/// A base port whose offsets used by up.sh are all free right now.
fn free_base() -> u16 {
    common::free_port_base(&[
        50, 51, 52, 53, 60, 61, 62, 63, 90, 91, 92, 93, 379, 380, 404, 432,
    ])
}

struct Cluster {
    dir: PathBuf,
    base: u16,
    env: HashMap<String, String>,
}

impl Cluster {
    async fn up() -> Cluster {
        let dir = common::tempdir().join("local-cluster");
        let base = free_base();
        let out = Command::new("bash")
            .arg(script("up.sh"))
            .env("LOCAL_CLUSTER_DIR", &dir)
            .env("LOCAL_CLUSTER_BASE_PORT", base.to_string())
            .env("LOCAL_CLUSTER_BIN", env!("CARGO_BIN_EXE_taskqueue"))
            .env("TASKQUEUE_DB_POOL_SIZE", "10")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .await
            .unwrap();
        let mut cluster = Cluster {
            env: HashMap::new(),
            dir,
            base,
        };
        assert!(
            out.status.success(),
            "up.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs()
        );
        let env = std::fs::read_to_string(cluster.dir.join("env")).unwrap();
        cluster.env = env
            .lines()
            .filter_map(|l| l.strip_prefix("export "))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        cluster
    }

    fn lb(&self) -> String {
        format!("127.0.0.1:{}", self.base + 50)
    }

    fn token(&self) -> &str {
        &self.env["TASKQUEUE_TOKEN"]
    }

    fn metrics_addr(&self, replica: u16) -> SocketAddr {
        format!("127.0.0.1:{}", self.base + 90 + replica)
            .parse()
            .unwrap()
    }

    fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.join("pids").join(format!("{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The last lines of every log, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
        {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {}\n", path.display()));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// A metric's value on one replica (sum over the series whose labels contain `labels`).
    async fn metric(&self, replica: u16, name: &str, labels: &str) -> Option<f64> {
        let addr = self.metrics_addr(replica);
        let text = http_get(addr, "/metrics").await?;
        let mut found = None;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else {
                continue;
            };
            if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
                continue;
            }
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *found.get_or_insert(0.0) += value;
        }
        found
    }

    /// Replicas (1..=3) reporting taskqueue_leader 1, among those that answer.
    async fn leaders(&self) -> Vec<u16> {
        let mut out = Vec::new();
        for r in 1..=3 {
            if self.metric(r, "taskqueue_leader", "").await == Some(1.0) {
                out.push(r);
            }
        }
        out
    }

    async fn prometheus(&self, query: &str) -> serde_json::Value {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.base + 90).parse().unwrap();
        let encoded: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let body = http_get(addr, &format!("/api/v1/query?query={encoded}")).await;
        body.and_then(|b| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Runs the fleet simulator through the load balancer with `args`; returns its JSON report.
    fn fleet_sim(&self, args: &[&str]) -> tokio::process::Child {
        Command::new(env!("CARGO_BIN_EXE_fleet-sim"))
            .args(["--targets", &self.lb(), "--token", self.token(), "--json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script("down.sh"))
            .arg("--purge")
            .env("LOCAL_CLUSTER_DIR", &self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

async fn report(child: tokio::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "fleet-sim failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("fleet-sim JSON report")
}

async fn wait_for(
    timeout: Duration,
    what: &str,
    cluster: &Cluster,
    mut check: impl AsyncFnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            cluster.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cluster_spreads_pings_elects_one_leader_and_survives_losing_it() {
    let cluster = Cluster::up().await;

    // 1. A workload through the load balancer: every replica serves pings.
    let sim = cluster.fleet_sim(&[
        "--workers",
        "30",
        "--concurrency",
        "2",
        "--ping-interval",
        "200ms",
        "--tasks",
        "300",
        "--duration",
        "60s",
        "--connections",
        "6",
        "--prefix",
        "spread",
    ]);
    let spread = report(sim).await;
    eprintln!("workload through the load balancer: {spread}");
    assert!(
        spread["tasks_assigned"].as_f64().unwrap() >= 300.0,
        "{spread}"
    );
    for r in 1..=3 {
        let pings = cluster
            .metric(
                r,
                "grpc_server_handled_total",
                "grpc_method=\"PingAndTakeNewTasks\"",
            )
            .await
            .unwrap_or(0.0);
        assert!(
            pings > 0.0,
            "replica {r} served no ping\n{}",
            cluster.logs()
        );
    }

    // 1b. The web front: TLS at haproxy, HTTP/2 by ALPN, gRPC-Web through to the replicas.
    let web = &cluster.env["LOCAL_CLUSTER_WEB"];
    let cert = &cluster.env["LOCAL_CLUSTER_WEB_CERT"];
    let curl = |args: &[&str]| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "--cacert",
                cert,
                "--http2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(
        curl(&[&format!("{web}/")]),
        "2 404",
        "no UI configured: 404 over h2"
    );
    for _ in 0..3 {
        // An empty ListWorkflows request (one empty frame, base64) with the worker token.
        let answer = curl(&[
            "-H",
            "content-type: application/grpc-web-text",
            "-H",
            &format!("authorization: Bearer {}", cluster.token()),
            "--data",
            "AAAAAAA=",
            &format!("{web}/taskqueue.TaskQueue/ListWorkflows"),
        ]);
        assert_eq!(answer, "2 200", "gRPC-Web through the web front");
    }

    // 2. Exactly one leader; Prometheus scrapes all three with our rules loaded.
    wait_for(
        Duration::from_secs(30),
        "one leader",
        &cluster,
        async || cluster.leaders().await.len() == 1,
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "prometheus scraping 3 replicas",
        &cluster,
        async || {
            let v = cluster
                .prometheus("count(up{job=\"taskqueue\"} == 1)")
                .await;
            v["data"]["result"][0]["value"][1] == "3"
        },
    )
    .await;
    let leaders = cluster
        .prometheus("sum(taskqueue_leader{job=\"taskqueue\"})")
        .await;
    assert_eq!(leaders["data"]["result"][0]["value"][1], "1", "{leaders}");
    let addr: SocketAddr = format!("127.0.0.1:{}", cluster.base + 90).parse().unwrap();
    let rules = http_get(addr, "/api/v1/rules").await.unwrap_or_default();
    assert!(
        rules.contains("TaskqueueNoLeader"),
        "alert rules not loaded"
    );

    // 3. A standing queue drained by workers while the leader replica is killed: no task lost.
    let channel = Target::new(format!("http://{}", cluster.lb()))
        .connect()
        .await
        .unwrap();
    let mut c = client::with_token(channel, Some(cluster.token())).unwrap();
    let mut ids = Vec::new();
    for i in 0..600 {
        let t = pb::TaskRequest {
            command: format!("failover {i}"),
            container: "none".into(),
            ..Default::default()
        };
        ids.push(submit(&mut c, t).await);
    }
    let sim = cluster.fleet_sim(&[
        "--workers",
        "30",
        "--concurrency",
        "1",
        "--ping-interval",
        "200ms",
        "--task-duration",
        "300ms",
        "--duration",
        "120s",
        "--connections",
        "6",
        "--prefix",
        "failover",
    ]);
    let leader = cluster.leaders().await[0];
    let url = &cluster.env["LOCAL_CLUSTER_DATABASE_URL"];
    let (sql, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let done = async |sql: &tokio_postgres::Client| -> i64 {
        sql.query_one(
            "SELECT count(*) FROM task WHERE status = 'S' AND command LIKE 'failover %'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    };
    wait_for(
        Duration::from_secs(60),
        "a quarter of the queue done",
        &cluster,
        async || done(&sql).await >= 150,
    )
    .await;
    let killed_at = Instant::now();
    // SAFETY: kill(2) on the pid of a replica this test started through up.sh.
    assert_eq!(
        unsafe { libc::kill(cluster.pid(&format!("replica-{leader}")), libc::SIGKILL) },
        0
    );
    let new_leader = async {
        wait_for(
            Duration::from_secs(60),
            "a new leader",
            &cluster,
            async || {
                let l = cluster.leaders().await;
                l.len() == 1 && l[0] != leader
            },
        )
        .await;
        killed_at.elapsed()
    };
    let all_done = async {
        wait_for(
            Duration::from_secs(90),
            "the whole queue done",
            &cluster,
            async || done(&sql).await == ids.len() as i64,
        )
        .await;
        killed_at.elapsed()
    };
    let (failover, drained) = tokio::join!(new_leader, all_done);
    let mut sim = sim;
    let _ = sim.start_kill();
    let _ = sim.wait().await;
    let rows = sql
        .query(
            "SELECT status, count(*) FROM task WHERE command LIKE 'failover %' GROUP BY status",
            &[],
        )
        .await
        .unwrap();
    let by_status: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(by_status, vec![("S".to_string(), ids.len() as i64)]);
    eprintln!(
        "leader replica-{leader} killed: new leader after {:.1}s, queue drained {:.1}s after the kill",
        failover.as_secs_f64(),
        drained.as_secs_f64()
    );
}
