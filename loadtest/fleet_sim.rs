//! fleet-sim: a worker-fleet simulator for load tests. N simulated workers register, ping random
//! target replicas (at once after receiving tasks, every `--ping-interval` otherwise) and complete
//! the tasks they get; a submitter feeds tasks. Prints pings/s, ping latency percentiles, tasks
//! assigned/s and queue wait (submit → first seen by a worker) percentiles.
//!
//! Example: `fleet-sim --targets 127.0.0.1:50051 --token $WORKER_TOKEN --workers 200 --tasks 100000`

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use rand::Rng as _;
use taskqueue::client::{self, Client, Target};
use taskqueue::proto as pb;
use tonic::Code;

/// Tries of one status update when a replica is unreachable.
const UPDATE_ATTEMPTS: usize = 10;

#[derive(Parser, Debug, Clone)]
#[command(about = "Simulate a fleet of taskqueue workers against one or more replicas")]
struct Args {
    /// Replica addresses (host:port), comma-separated; each request goes to a random one.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:50051")]
    targets: Vec<String>,
    /// Token the workers (and the submitter) send: the worker token.
    #[arg(long, env = "TASKQUEUE_TOKEN", default_value = "")]
    token: String,
    /// Number of simulated workers.
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Concurrency of each worker.
    #[arg(long, default_value_t = 1)]
    concurrency: i32,
    /// Prefetch of each worker.
    #[arg(long, default_value_t = 0)]
    prefetch: i32,
    /// Pause between pings of a worker that got nothing new (the real worker waits 5 s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// Simulated run time of a task.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    task_duration: Duration,
    /// Spread of the run times: each task runs `--task-duration` × a uniform factor in
    /// [1 − J, 1 + J] (0 ≤ J < 1). With 0 (the default) every task runs exactly as long, and a fleet
    /// started at once keeps finishing — and claiming — in waves one run time apart.
    #[arg(long, default_value_t = 0.0)]
    task_duration_jitter: f64,
    /// Print one line per second to stderr (pings, their p99 and max, status updates and their
    /// p99): where in a run the tail comes from.
    #[arg(long)]
    timeline: bool,
    /// Tasks to submit.
    #[arg(long, default_value_t = 0)]
    tasks: usize,
    /// Submit every task before the workers start (a standing queue), instead of while they run.
    #[arg(long)]
    preload: bool,
    /// Status updates per task: `full` (C, R, S — as real workers), `nominal` (C, O, R, U, S — the
    /// whole chain of the original worker), `minimal` (S only), `none`.
    #[arg(long, default_value = "full")]
    lifecycle: String,
    /// Stop after this long (or when every submitted task finished).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Stop once this many tasks were assigned (drain a standing queue loaded by other means).
    #[arg(long, default_value_t = 0)]
    stop_after_assigned: u64,
    /// Stop once this many tasks went through their whole lifecycle (drain a standing queue).
    #[arg(long, default_value_t = 0)]
    stop_after_finished: u64,
    /// A worker also pings as soon as one of its tasks finished (a free slot), not only every
    /// `--ping-interval`: the throughput of a fleet that fetches work when a slot frees.
    #[arg(long)]
    ping_on_finish: bool,
    /// gRPC connections per target.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Concurrent submissions.
    #[arg(long, default_value_t = 16)]
    submitters: usize,
    /// Name prefix of the simulated workers (re-running with the same prefix re-registers them).
    #[arg(long, default_value = "sim")]
    prefix: String,
    /// Leave this long out of the report: pings, rates and latencies count from then on (the
    /// registrations and first claims of a fleet starting at once are not its steady state).
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// `fleet` (simulated workers) or `health`: `--workers` loops calling grpc.health.v1 Check, the
    /// rate of a unary RPC that touches no database (the reference for idle pings).
    #[arg(long, default_value = "fleet")]
    mode: String,
    /// Serve a bare tonic health service on this address and nothing else (run it as its own
    /// process and point `--mode health` at it: the rate of a bare tonic unary RPC on this machine).
    #[arg(long)]
    bare_server: Option<std::net::SocketAddr>,
}

#[derive(Default)]
struct Stats {
    pings: AtomicU64,
    assigning_pings: AtomicU64,
    assigned: AtomicU64,
    updates: AtomicU64,
    errors: AtomicU64,
    finished: AtomicU64,
    ping_latency: Mutex<Option<Histogram<u64>>>,
    /// Ping latency of the current second (the timeline and the worst-second figure).
    ping_second: Mutex<Option<Histogram<u64>>>,
    update_latency: Mutex<Option<Histogram<u64>>>,
    update_second: Mutex<Option<Histogram<u64>>>,
    queue_wait: Mutex<Option<Histogram<u64>>>,
    submitted_at: Mutex<HashMap<i32, Instant>>,
}

/// The counters the report is made of, read at one moment.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    pings: u64,
    assigning_pings: u64,
    assigned: u64,
    updates: u64,
    finished: u64,
}

impl Stats {
    fn counts(&self) -> Counts {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            pings: load(&self.pings),
            assigning_pings: load(&self.assigning_pings),
            assigned: load(&self.assigned),
            updates: load(&self.updates),
            finished: load(&self.finished),
        }
    }
}

/// CPU seconds (user + system, every thread) this process used so far, from /proc/self/stat (in
/// clock ticks of 1/100 s, Linux's fixed USER_HZ); 0 where there is no /proc.
fn own_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // "pid (comm) state ppid …": fields 14 and 15 are utime and stime.
    let after = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

fn record(h: &Mutex<Option<Histogram<u64>>>, micros: u64) {
    let mut g = h.lock().unwrap();
    let _ = g.get_or_insert_with(histogram).record(micros.max(1));
}

struct Pool {
    clients: Vec<Client>,
}

impl Pool {
    fn pick(&self) -> Client {
        self.clients[rand::rng().random_range(0..self.clients.len())].clone()
    }
}

async fn simulated_worker(
    args: Arc<Args>,
    pool: Arc<Pool>,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    index: usize,
) {
    let info = pb::WorkerInfo {
        name: format!("{}-{index}", args.prefix),
        concurrency: Some(args.concurrency),
        ..Default::default()
    };
    let worker_id = loop {
        match pool.pick().register_worker(info.clone()).await {
            Ok(r) => break r.into_inner().worker_id,
            Err(_) if !stop.load(Ordering::Relaxed) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => return,
        }
    };
    if args.prefetch > 0 {
        let req = pb::WorkerUpdateRequest {
            worker_id,
            prefetch: Some(args.prefetch),
            ..Default::default()
        };
        let _ = pool.pick().update_worker(req).await;
    }
    // Real fleets do not ping in step: the first pings are spread over one ping interval.
    let spread = args
        .ping_interval
        .mul_f64(index as f64 / args.workers.max(1) as f64);
    tokio::time::sleep(spread).await;
    let mut seen = std::collections::HashSet::new();
    let slot_freed = Arc::new(tokio::sync::Notify::new());
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        let answer = pool
            .pick()
            .ping_and_take_new_tasks(pb::PingAndGetNewTasksRequest {
                worker_id,
                stats: None,
            })
            .await;
        let elapsed = start.elapsed();
        stats.pings.fetch_add(1, Ordering::Relaxed);
        record(&stats.ping_latency, elapsed.as_micros() as u64);
        record(&stats.ping_second, elapsed.as_micros() as u64);
        let answer = match answer {
            Ok(a) => a.into_inner(),
            Err(_) => {
                stats.errors.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let fresh: Vec<pb::Task> = answer
            .tasks
            .into_iter()
            .filter(|t| seen.insert(t.task_id))
            .collect();
        if fresh.is_empty() {
            if args.ping_on_finish {
                // Notify keeps one permit: a task that finished during the ping wakes us at once.
                let _ = tokio::time::timeout(args.ping_interval, slot_freed.notified()).await;
            } else {
                tokio::time::sleep(args.ping_interval).await;
            }
            continue;
        }
        stats.assigning_pings.fetch_add(1, Ordering::Relaxed);
        stats
            .assigned
            .fetch_add(fresh.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        {
            let mut submitted = stats.submitted_at.lock().unwrap();
            for t in &fresh {
                if let Some(at) = submitted.remove(&t.task_id) {
                    record(&stats.queue_wait, (now - at).as_micros() as u64);
                }
            }
        }
        for t in fresh {
            let (args, pool, stats) = (args.clone(), pool.clone(), stats.clone());
            let slot_freed = slot_freed.clone();
            tokio::spawn(async move {
                run_task(&args, &pool, &stats, t.task_id).await;
                slot_freed.notify_one();
            });
        }
    }
}

async fn run_task(args: &Args, pool: &Pool, stats: &Stats, task_id: i32) {
    let chain: &[&str] = match args.lifecycle.as_str() {
        "none" => &[],
        "minimal" => &["S"],
        "nominal" => &["C", "O", "R", "U", "S"],
        _ => &["C", "R", "S"],
    };
    let jitter = args.task_duration_jitter.clamp(0.0, 0.99);
    let run_time = if jitter > 0.0 {
        args.task_duration
            .mul_f64(rand::rng().random_range(1.0 - jitter..=1.0 + jitter))
    } else {
        args.task_duration
    };
    for (i, status) in chain.iter().enumerate() {
        if *status == "S" && !run_time.is_zero() {
            tokio::time::sleep(run_time).await;
        }
        let req = pb::TaskStatusUpdate {
            task_id,
            new_status: (*status).into(),
            duration: Some(0),
            free_retry: None,
        };
        // As a real worker: an update that did not get through (a replica went away behind the
        // load balancer) is sent again, through another connection.
        for attempt in 0..UPDATE_ATTEMPTS {
            let start = Instant::now();
            match pool.pick().update_task_status(req.clone()).await {
                Ok(_) => {
                    let micros = start.elapsed().as_micros() as u64;
                    record(&stats.update_latency, micros);
                    record(&stats.update_second, micros);
                    break;
                }
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    let transient = matches!(
                        e.code(),
                        Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                    );
                    if !transient || attempt + 1 == UPDATE_ATTEMPTS {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        stats.updates.fetch_add(1, Ordering::Relaxed);
        if i + 1 == chain.len() {
            stats.finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn submit(args: Arc<Args>, pool: Arc<Pool>, stats: Arc<Stats>, count: usize) {
    futures::stream::iter(0..count)
        .for_each_concurrent(args.submitters, |i| {
            let (pool, stats) = (pool.clone(), stats.clone());
            async move {
                let req = pb::TaskRequest {
                    command: format!("sim {i}"),
                    container: "none".into(),
                    ..Default::default()
                };
                let at = Instant::now();
                match pool.pick().submit_task(req).await {
                    Ok(r) => {
                        stats
                            .submitted_at
                            .lock()
                            .unwrap()
                            .insert(r.into_inner().task_id, at);
                    }
                    Err(_) => {
                        stats.errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
        .await;
}

/// p50, p95, p99 and max in ms (zeros when nothing was recorded).
fn quantiles(h: &Mutex<Option<Histogram<u64>>>) -> [f64; 4] {
    h.lock().unwrap().as_ref().map_or([0.0; 4], ms_quantiles)
}

/// The same, starting the histogram afresh (the per-second figures).
fn take_quantiles(h: &Mutex<Option<Histogram<u64>>>) -> [f64; 4] {
    h.lock()
        .unwrap()
        .take()
        .as_ref()
        .map_or([0.0; 4], ms_quantiles)
}

fn ms_quantiles(h: &Histogram<u64>) -> [f64; 4] {
    [0.5, 0.95, 0.99, 1.0].map(|q| h.value_at_quantile(q) as f64 / 1000.0)
}

async fn bare_server(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    eprintln!("bare tonic health server on {addr}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service)
        .serve(addr)
        .await?;
    Ok(())
}

async fn health_load(args: &Args) -> anyhow::Result<()> {
    let mut channels = Vec::new();
    for target in &args.targets {
        for _ in 0..args.connections.max(1) {
            channels.push(Target::new(target.clone()).connect().await?);
        }
    }
    let calls = Arc::new(AtomicU64::new(0));
    let latency: Arc<Mutex<Option<Histogram<u64>>>> = Arc::default();
    let deadline = Instant::now() + args.duration;
    let loops: Vec<_> = (0..args.workers)
        .map(|i| {
            let channel = channels[i % channels.len()].clone();
            let (calls, latency) = (calls.clone(), latency.clone());
            tokio::spawn(async move {
                let mut c = tonic_health::pb::health_client::HealthClient::new(channel);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if c.check(tonic_health::pb::HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .is_ok()
                    {
                        calls.fetch_add(1, Ordering::Relaxed);
                        record(&latency, t.elapsed().as_micros() as u64);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    let cpu_from = own_cpu_s();
    for l in loops {
        l.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let client_cpu_s = own_cpu_s() - cpu_from;
    let [p50, _, p99, _] = quantiles(&latency);
    let rate = calls.load(Ordering::Relaxed) as f64 / secs;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"mode": "health", "calls": calls.load(Ordering::Relaxed), "calls_per_s": rate,
                "p50_ms": p50, "p99_ms": p99, "client_cpu_s": client_cpu_s})
        );
    } else {
        println!(
            "health: {rate:.0} calls/s with {} loops, p50 {p50:.2} ms p99 {p99:.2} ms",
            args.workers
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(Args::parse());
    if let Some(addr) = args.bare_server {
        return bare_server(addr).await;
    }
    if args.mode == "health" {
        return health_load(&args).await;
    }
    let mut clients = Vec::new();
    for target in &args.targets {
        for _ in 0..args.connections.max(1) {
            clients.push(client::with_token(
                Target::new(target.clone()).connect().await?,
                Some(&args.token),
            )?);
        }
    }
    let pool = Arc::new(Pool { clients });
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));

    if args.preload && args.tasks > 0 {
        let t = Instant::now();
        submit(args.clone(), pool.clone(), stats.clone(), args.tasks).await;
        eprintln!(
            "preloaded {} tasks in {:.1}s",
            args.tasks,
            t.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let workers: Vec<_> = (0..args.workers)
        .map(|i| {
            tokio::spawn(simulated_worker(
                args.clone(),
                pool.clone(),
                stats.clone(),
                stop.clone(),
                i,
            ))
        })
        .collect();
    let submitter = (!args.preload && args.tasks > 0).then(|| {
        tokio::spawn(submit(
            args.clone(),
            pool.clone(),
            stats.clone(),
            args.tasks,
        ))
    });
    let deadline = started + args.duration;
    // The measured window: from the end of the warm-up, with the counters as they were then.
    let mut window = (started, Counts::default(), own_cpu_s());
    let mut warming = !args.warmup.is_zero();
    // Per second of the measured window: (ping p99, ping max, update p99), in ms.
    let mut seconds: Vec<[f64; 3]> = Vec::new();
    let mut second = (Instant::now(), stats.counts());
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if warming && started.elapsed() >= args.warmup {
            warming = false;
            stats.ping_latency.lock().unwrap().take();
            stats.update_latency.lock().unwrap().take();
            window = (Instant::now(), stats.counts(), own_cpu_s());
        }
        if second.0.elapsed() >= Duration::from_secs(1) {
            let [_, _, p99, max] = take_quantiles(&stats.ping_second);
            let [_, _, u99, _] = take_quantiles(&stats.update_second);
            let now = stats.counts();
            if !warming {
                seconds.push([p99, max, u99]);
            }
            if args.timeline {
                eprintln!(
                    "t={:5.1}s pings {:5} p99 {:7.2} ms max {:7.2} ms | updates {:5} p99 {:7.2} ms{}",
                    started.elapsed().as_secs_f64(),
                    now.pings - second.1.pings,
                    p99,
                    max,
                    now.updates - second.1.updates,
                    u99,
                    if warming { " (warm-up)" } else { "" }
                );
            }
            second = (Instant::now(), now);
        }
        let all_done =
            args.tasks > 0 && stats.finished.load(Ordering::Relaxed) as usize >= args.tasks;
        let all_assigned = args.lifecycle == "none"
            && stats.assigned.load(Ordering::Relaxed) as usize >= args.tasks
            && args.tasks > 0;
        let drained = args.stop_after_assigned > 0
            && stats.assigned.load(Ordering::Relaxed) >= args.stop_after_assigned;
        let finished = args.stop_after_finished > 0
            && stats.finished.load(Ordering::Relaxed) >= args.stop_after_finished;
        if all_done || all_assigned || drained || finished {
            break;
        }
    }
    let elapsed = window.0.elapsed().as_secs_f64();
    let client_cpu_s = own_cpu_s() - window.2;
    let end = stats.counts();
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = submitter {
        s.abort();
    }
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(10), w).await;
    }

    let from = window.1;
    let pings = (end.pings - from.pings) as f64;
    let assigning = (end.assigning_pings - from.assigning_pings) as f64;
    let assigned = (end.assigned - from.assigned) as f64;
    let updates = (end.updates - from.updates) as f64;
    let finished = (end.finished - from.finished) as f64;
    let errors = stats.errors.load(Ordering::Relaxed) as f64;
    let [p50, p95, p99, max] = quantiles(&stats.ping_latency);
    let [w50, _, w99, _] = quantiles(&stats.queue_wait);
    let [u50, _, u99, _] = quantiles(&stats.update_latency);
    // The tail by second: the worst second's p99, and how many seconds had a p99 above 10 ms.
    let worst_second_p99 = seconds.iter().map(|s| s[0]).fold(0.0, f64::max);
    let seconds_over_10ms = seconds.iter().filter(|s| s[0] > 10.0).count();
    let report = serde_json::json!({
        "seconds": elapsed,
        "workers": args.workers,
        "pings": pings,
        "pings_per_s": pings / elapsed,
        "assigning_pings_per_s": assigning / elapsed,
        "ping_ms": {"p50": p50, "p95": p95, "p99": p99, "max": max},
        "ping_p99_by_second": {"worst_ms": worst_second_p99, "seconds": seconds.len(),
                               "seconds_over_10ms": seconds_over_10ms},
        "update_ms": {"p50": u50, "p99": u99},
        "tasks_assigned": assigned,
        "tasks_assigned_per_s": assigned / elapsed,
        "status_updates": updates,
        "status_updates_per_s": updates / elapsed,
        "tasks_finished": finished,
        "tasks_finished_per_s": finished / elapsed,
        "assigning_pings": assigning,
        "client_cpu_s": client_cpu_s,
        "queue_wait_ms": {"p50": w50, "p99": w99},
        "errors": errors,
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "{:.0} s, {} workers: {:.0} pings/s (assigning {:.0}/s), ping p50 {:.2} ms p95 {:.2} ms p99 {:.2} ms max {:.1} ms; \
             {:.0} tasks assigned/s; queue wait p50 {:.1} ms p99 {:.1} ms; {:.0} status updates/s (p99 {:.2} ms); \
             worst second's ping p99 {:.1} ms; {} errors",
            elapsed,
            args.workers,
            pings / elapsed,
            assigning / elapsed,
            p50,
            p95,
            p99,
            max,
            assigned / elapsed,
            w50,
            w99,
            updates / elapsed,
            u99,
            worst_second_p99,
            errors
        );
    }
    Ok(())
}
