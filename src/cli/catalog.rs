//! `taskqueue flavor …`, `taskqueue provider list`, `taskqueue region list` and
//! `taskqueue recruiter …`.

use clap::{Args, Subcommand};

use super::output::{self, Format, rpc};
use crate::client::Client;
use crate::proto as pb;

#[derive(Debug, Subcommand)]
pub enum FlavorCmd {
    /// List flavors (one row per flavor and region), cheapest first.
    List {
        /// Protofilter, e.g. "cpu>=8:mem>=30:region is default".
        #[arg(long, default_value = "")]
        filter: String,
        #[arg(long, default_value_t = 10)]
        limit: i32,
    },
    /// Declare a flavor (admin).
    Create(FlavorArgs),
}

#[derive(Debug, Args)]
pub struct FlavorArgs {
    /// Provider, as "name.config" (e.g. local.local).
    #[arg(long)]
    pub provider: String,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub cpu: i32,
    /// Memory in GB.
    #[arg(long)]
    pub mem: f32,
    /// Disk in GB.
    #[arg(long)]
    pub disk: f32,
    /// Region where the flavor exists (repeatable).
    #[arg(long = "region", required = true)]
    pub regions: Vec<String>,
    /// Cost per region, in the order of --region.
    #[arg(long = "cost")]
    pub costs: Vec<f32>,
    /// Eviction rate per region, in the order of --region.
    #[arg(long = "eviction")]
    pub evictions: Vec<f32>,
    #[arg(long)]
    pub bandwidth: Option<i32>,
    #[arg(long)]
    pub gpu: Option<String>,
    #[arg(long)]
    pub gpumem: Option<i32>,
    #[arg(long)]
    pub has_gpu: bool,
    #[arg(long)]
    pub has_quick_disks: bool,
}

#[derive(Debug, Subcommand)]
pub enum ListOnly {
    /// List them.
    List,
}

#[derive(Debug, Subcommand)]
pub enum RecruiterCmd {
    /// List recruiters.
    List {
        #[arg(long)]
        step: Option<i32>,
    },
    /// Create a recruiter for a step.
    Create(RecruiterArgs),
    /// Change a recruiter (only the given fields).
    Update(RecruiterArgs),
    /// Delete a recruiter.
    Delete {
        #[arg(long)]
        step: i32,
        #[arg(long, default_value_t = 1)]
        rank: i32,
    },
}

#[derive(Debug, Args)]
pub struct RecruiterArgs {
    #[arg(long)]
    pub step: i32,
    #[arg(long, default_value_t = 1)]
    pub rank: i32,
    /// Flavor protofilter, e.g. "cpu>=8:mem>=30".
    #[arg(long)]
    pub filter: Option<String>,
    /// Static concurrency of recruited workers.
    #[arg(long)]
    pub concurrency: Option<i32>,
    #[arg(long)]
    pub prefetch: Option<i32>,
    #[arg(long)]
    pub max_workers: Option<i32>,
    /// How many rounds the pending tasks should take.
    #[arg(long)]
    pub rounds: Option<i32>,
    /// Seconds to wait before deploying new workers.
    #[arg(long)]
    pub timeout: Option<i32>,
    #[arg(long)]
    pub cpu_per_task: Option<i32>,
    #[arg(long)]
    pub memory_per_task: Option<f32>,
    #[arg(long)]
    pub disk_per_task: Option<f32>,
    #[arg(long)]
    pub prefetch_percent: Option<i32>,
    #[arg(long)]
    pub concurrency_min: Option<i32>,
    #[arg(long)]
    pub concurrency_max: Option<i32>,
}

pub async fn run_flavor(cmd: FlavorCmd, client: &mut Client, format: Format) -> anyhow::Result<()> {
    match cmd {
        FlavorCmd::List { filter, limit } => {
            let r = rpc(client
                .list_flavors(pb::ListFlavorsRequest { limit, filter })
                .await)?;
            output::print(format, &r.flavors, || {
                let mut t = output::table(&[
                    "ID", "NAME", "PROVIDER", "REGION", "CPU", "MEM", "DISK", "GPU", "COST",
                    "EVICTION",
                ]);
                for f in &r.flavors {
                    t.add_row(vec![
                        f.flavor_id.to_string(),
                        f.flavor_name.clone(),
                        f.provider.clone(),
                        f.region.clone(),
                        f.cpu.to_string(),
                        format!("{}", f.mem),
                        format!("{}", f.disk),
                        if f.has_gpu {
                            f.gpu.clone()
                        } else {
                            String::new()
                        },
                        format!("{}", f.cost),
                        format!("{}", f.eviction),
                    ]);
                }
                t
            })
        }
        FlavorCmd::Create(a) => {
            let (provider_name, config_name) = a.provider.split_once('.').ok_or_else(|| {
                anyhow::anyhow!("--provider must be name.config, e.g. local.local")
            })?;
            let r = rpc(client
                .create_flavor(pb::FlavorCreateRequest {
                    provider_name: provider_name.into(),
                    config_name: config_name.into(),
                    flavor_name: a.name,
                    cpu: a.cpu,
                    memory: a.mem,
                    disk: a.disk,
                    bandwidth: a.bandwidth,
                    gpu: a.gpu,
                    gpumem: a.gpumem,
                    has_gpu: a.has_gpu.then_some(true),
                    has_quick_disks: a.has_quick_disks.then_some(true),
                    region_names: a.regions,
                    costs: a.costs,
                    evictions: a.evictions,
                })
                .await)?;
            match format {
                Format::Json => println!("{}", serde_json::json!({ "flavor_id": r.flavor_id })),
                Format::Table => println!("{}", r.flavor_id),
            }
            Ok(())
        }
    }
}

pub async fn run_provider(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let r = rpc(client.list_providers(()).await)?;
    output::print(format, &r.providers, || {
        let mut t = output::table(&["ID", "PROVIDER", "CONFIG"]);
        for p in &r.providers {
            t.add_row(vec![
                p.provider_id.to_string(),
                p.provider_name.clone(),
                p.config_name.clone(),
            ]);
        }
        t
    })
}

pub async fn run_region(client: &mut Client, format: Format) -> anyhow::Result<()> {
    let r = rpc(client.list_regions(()).await)?;
    output::print(format, &r.regions, || {
        let mut t = output::table(&["ID", "PROVIDER", "REGION", "DEFAULT"]);
        for g in &r.regions {
            t.add_row(vec![
                g.region_id.to_string(),
                g.provider_id.to_string(),
                g.region_name.clone(),
                if g.is_default { "yes" } else { "" }.into(),
            ]);
        }
        t
    })
}

pub async fn run_recruiter(
    cmd: RecruiterCmd,
    client: &mut Client,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        RecruiterCmd::List { step } => {
            let r = rpc(client
                .list_recruiters(pb::RecruiterFilter { step_id: step })
                .await)?;
            output::print(format, &r.recruiters, || {
                let mut t = output::table(&[
                    "STEP",
                    "RANK",
                    "FILTER",
                    "CONCURRENCY",
                    "PREFETCH",
                    "MAX WORKERS",
                    "ROUNDS",
                    "TIMEOUT",
                ]);
                for x in &r.recruiters {
                    t.add_row(vec![
                        x.step_id.to_string(),
                        x.rank.to_string(),
                        x.protofilter.clone(),
                        output::opt(&x.concurrency),
                        output::opt(&x.prefetch),
                        output::opt(&x.max_workers),
                        x.rounds.to_string(),
                        x.timeout.to_string(),
                    ]);
                }
                t
            })
        }
        RecruiterCmd::Create(a) => {
            let (step, rank) = (a.step, a.rank);
            rpc(client
                .create_recruiter(pb::Recruiter {
                    step_id: a.step,
                    rank: a.rank,
                    protofilter: a.filter.unwrap_or_default(),
                    concurrency: a.concurrency,
                    prefetch: a.prefetch,
                    max_workers: a.max_workers,
                    rounds: a.rounds.unwrap_or(1),
                    timeout: a.timeout.unwrap_or(0),
                    cpu_per_task: a.cpu_per_task,
                    memory_per_task: a.memory_per_task,
                    disk_per_task: a.disk_per_task,
                    prefetch_percent: a.prefetch_percent,
                    concurrency_min: a.concurrency_min,
                    concurrency_max: a.concurrency_max,
                })
                .await)?;
            output::done(
                format,
                &format!("recruiter {rank} of step {step} created"),
                serde_json::json!({ "step_id": step, "rank": rank }),
            )
        }
        RecruiterCmd::Update(a) => {
            let (step, rank) = (a.step, a.rank);
            rpc(client
                .update_recruiter(pb::RecruiterUpdate {
                    step_id: a.step,
                    rank: a.rank,
                    protofilter: a.filter,
                    concurrency: a.concurrency,
                    prefetch: a.prefetch,
                    max_workers: a.max_workers,
                    rounds: a.rounds,
                    timeout: a.timeout,
                    cpu_per_task: a.cpu_per_task,
                    memory_per_task: a.memory_per_task,
                    disk_per_task: a.disk_per_task,
                    prefetch_percent: a.prefetch_percent,
                    concurrency_min: a.concurrency_min,
                    concurrency_max: a.concurrency_max,
                })
                .await)?;
            output::done(
                format,
                &format!("recruiter {rank} of step {step} updated"),
                serde_json::json!({ "step_id": step, "rank": rank }),
            )
        }
        RecruiterCmd::Delete { step, rank } => {
            rpc(client
                .delete_recruiter(pb::RecruiterId {
                    step_id: step,
                    rank,
                })
                .await)?;
            output::done(
                format,
                &format!("recruiter {rank} of step {step} deleted"),
                serde_json::json!({ "step_id": step, "rank": rank }),
            )
        }
    }
}
