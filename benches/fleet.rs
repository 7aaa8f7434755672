//! Fleet decisions, measured: protofilter parsing and compilation, and one recruitment plan over a
//! large snapshot (50 recruiters, 5,000 recyclable workers, 40 regions).

use std::collections::HashMap;

use criterion::{Criterion, black_box, criterion_group, criterion_main};
use taskqueue::db::catalog::filter_sql;
use taskqueue::domain::protofilter::parse;
use taskqueue::domain::quota::{Quota, Usage};
use taskqueue::domain::recruitment::{
    ActiveRecruiter, Candidate, Offer, Resources, Sizing, Snapshot, plan,
};
use taskqueue::domain::status::RecyclableScope;

fn snapshot() -> Snapshot {
    let offers: Vec<Offer> = (0..200)
        .map(|i| Offer {
            flavor_id: i % 20 + 1,
            region_id: i / 20 * 4 + 1,
            resources: Resources {
                cpu: 2 << (i % 4),
                mem: f64::from(8 << (i % 4)),
                disk: 100.0,
            },
            available: i % 7 != 0,
        })
        .collect();
    let recruiters = (0..50)
        .map(|i| ActiveRecruiter {
            step_id: i + 1,
            rank: 1,
            workflow_id: i % 5 + 1,
            sizing: Sizing {
                cpu_per_task: Some(2),
                prefetch_percent: Some(50),
                concurrency_max: Some(16),
                ..Sizing::default()
            },
            max_workers: Some(100),
            rounds: 4,
            pending: 5_000,
            free_rate: 10.0,
            current_workers: 5,
            timeout_passed: true,
            offers: offers[(i as usize * 3) % 150..][..50].to_vec(),
        })
        .collect();
    let candidates = (0..5_000)
        .map(|i| Candidate {
            worker_id: i + 1,
            step_id: Some(i % 80 + 1),
            workflow_id: Some(i % 5 + 1),
            flavor_id: i % 20 + 1,
            region_id: (i % 10) * 4 + 1,
            resources: Resources {
                cpu: 8,
                mem: 32.0,
                disk: 100.0,
            },
            concurrency: 4,
            load: f64::from(i % 5),
            scope: if i % 3 == 0 {
                RecyclableScope::Global
            } else {
                RecyclableScope::Workflow
            },
        })
        .collect();
    Snapshot {
        recruiters,
        candidates,
        pending_by_step: (1..=80)
            .map(|s| (s, if s % 2 == 0 { 0 } else { 10 }))
            .collect(),
        quotas: (0..40)
            .map(|r| {
                (
                    r * 4 + 1,
                    (
                        Quota {
                            max_cpu: 2_000,
                            max_mem: Some(8_000.0),
                        },
                        Usage {
                            cpu: 100,
                            mem: 400.0,
                        },
                    ),
                )
            })
            .collect(),
        workflows: (1..=5)
            .map(|w| (w, (50, Some(500))))
            .collect::<HashMap<_, _>>(),
    }
}

fn benches(c: &mut Criterion) {
    let filter = "cpu>=8:mem>=30:provider=azure.primary:region is default:has_gpu=false:cost<=1.5";
    c.bench_function("protofilter_parse", |b| {
        b.iter(|| parse(black_box(filter)).unwrap())
    });
    let parsed = parse(filter).unwrap();
    c.bench_function("protofilter_compile", |b| {
        b.iter(|| filter_sql(black_box(&parsed), 2))
    });
    let s = snapshot();
    c.bench_function("recruitment_plan_50x5000", |b| {
        b.iter(|| plan(black_box(&s)))
    });
}

criterion_group!(fleet, benches);
criterion_main!(fleet);
