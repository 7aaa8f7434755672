//! Benchmarks of the pure dispatch rules that run on every ping (src/domain/dispatch.rs): capacity,
//! the ping plan, sorting the held tasks into the answer, and the shard a claim starts at.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use taskqueue::domain::dispatch::{self, HeldTask, WorkerSnapshot};
use taskqueue::domain::status::{TaskStatus, WorkerStatus};

fn rules(c: &mut Criterion) {
    c.bench_function("free_capacity", |b| {
        b.iter(|| dispatch::free_capacity(black_box(16), black_box(4), black_box(13.5)))
    });
    let snapshot = WorkerSnapshot {
        status: WorkerStatus::Ready,
        concurrency: 16,
        prefetch: 4,
        held_weight: 12.0,
        last_ping_age: Some(Duration::from_secs(3)),
        stats_age: Some(Duration::from_secs(3)),
    };
    let interval = Duration::from_secs(10);
    c.bench_function("plan_ping", |b| {
        b.iter(|| dispatch::plan_ping(black_box(&snapshot), true, interval))
    });
    let statuses = [
        TaskStatus::Assigned,
        TaskStatus::Accepted,
        TaskStatus::Running,
        TaskStatus::OnHold,
        TaskStatus::UploadingSuccess,
    ];
    let held: Vec<HeldTask> = (0..20)
        .map(|i| HeldTask {
            task_id: 1000 + i,
            status: statuses[i as usize % statuses.len()],
            weight: 1.0,
        })
        .collect();
    c.bench_function("report_20_held_tasks", |b| {
        b.iter(|| dispatch::report(black_box(&held)))
    });
    c.bench_function("first_shard", |b| {
        b.iter(|| dispatch::first_shard(black_box(123_457), black_box(16)))
    });
    c.bench_function("parse_task_status", |b| {
        b.iter(|| TaskStatus::parse(black_box("R")))
    });
}

criterion_group!(benches, rules);
criterion_main!(benches);
