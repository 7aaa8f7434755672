//! `taskqueue workers …` (the plural, to stay apart from `taskqueue worker`, which runs the agent):
//! list, create, delete, update, status, stats.

use clap::{Args, Subcommand};

use super::output::{self, Format, rpc};
use crate::client::Client;
use crate::proto as pb;

#[derive(Debug, Subcommand)]
pub enum WorkersCmd {
    /// List workers.
    List {
        /// Only workers serving steps of this workflow.
        #[arg(long)]
        workflow: Option<i32>,
    },
    /// Deploy workers on a provider (the server runs the provider jobs).
    Create(CreateArgs),
    /// Delete a worker (cloud workers: their VM is deleted by a job; prints the job id).
    Delete { id: i32 },
    /// Change a worker's settings.
    Update(UpdateArgs),
    /// Show workers' statuses, or set one with --set (P pause, R resume, F failing …).
    Status {
        #[arg(required = true)]
        ids: Vec<i32>,
        /// New status letter for the given workers.
        #[arg(long)]
        set: Option<String>,
    },
    /// Latest machine statistics of workers (from their pings).
    Stats {
        #[arg(required = true)]
        ids: Vec<i32>,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Flavor id (see `taskqueue flavor list`).
    #[arg(long)]
    pub flavor: i32,
    /// Region id (see `taskqueue region list`).
    #[arg(long)]
    pub region: i32,
    /// Provider id (informational: the region decides).
    #[arg(long, default_value_t = 0)]
    pub provider: i32,
    #[arg(long, default_value_t = 1)]
    pub number: i32,
    #[arg(long, default_value_t = 1)]
    pub concurrency: i32,
    #[arg(long, default_value_t = 0)]
    pub prefetch: i32,
    #[arg(long)]
    pub step: Option<i32>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    pub id: i32,
    #[arg(long)]
    pub concurrency: Option<i32>,
    #[arg(long)]
    pub prefetch: Option<i32>,
    /// Step (id) the worker serves.
    #[arg(long)]
    pub step: Option<i32>,
    #[arg(long)]
    pub flavor: Option<i32>,
    #[arg(long)]
    pub region: Option<i32>,
    #[arg(long)]
    pub permanent: Option<bool>,
    /// G any recruiter may recycle it, W same workflow only, T temporarily not, N never.
    #[arg(long)]
    pub recyclable_scope: Option<String>,
}

pub async fn run(cmd: WorkersCmd, client: &mut Client, format: Format) -> anyhow::Result<()> {
    match cmd {
        WorkersCmd::List { workflow } => {
            let r = rpc(client
                .list_workers(pb::ListWorkersRequest {
                    workflow_id: workflow,
                })
                .await)?;
            output::print(format, &r.workers, || {
                let mut t = output::table(&[
                    "ID",
                    "NAME",
                    "STATUS",
                    "CONCURRENCY",
                    "PREFETCH",
                    "STEP",
                    "PROVIDER",
                    "REGION",
                    "FLAVOR",
                    "PERMANENT",
                ]);
                for w in &r.workers {
                    t.add_row(vec![
                        w.worker_id.to_string(),
                        w.name.clone(),
                        w.status.clone(),
                        w.concurrency.to_string(),
                        w.prefetch.to_string(),
                        match (&w.step_id, &w.step_name) {
                            (Some(id), Some(name)) => format!("{id} ({name})"),
                            (id, _) => output::opt(id),
                        },
                        w.provider.clone(),
                        w.region.clone(),
                        w.flavor.clone(),
                        if w.is_permanent { "yes" } else { "no" }.into(),
                    ]);
                }
                t
            })
        }
        WorkersCmd::Create(a) => {
            let r = rpc(client
                .create_worker(pb::WorkerRequest {
                    provider_id: a.provider,
                    flavor_id: a.flavor,
                    region_id: a.region,
                    number: a.number,
                    concurrency: a.concurrency,
                    prefetch: a.prefetch,
                    step_id: a.step,
                })
                .await)?;
            output::print(format, &r.workers_details, || {
                let mut t = output::table(&["ID", "NAME", "JOB"]);
                for w in &r.workers_details {
                    t.add_row(vec![
                        w.worker_id.to_string(),
                        w.worker_name.clone(),
                        w.job_id.to_string(),
                    ]);
                }
                t
            })
        }
        WorkersCmd::Delete { id } => {
            let r = rpc(client
                .delete_worker(pb::WorkerDeletion {
                    worker_id: id,
                    undeployed: None,
                })
                .await)?;
            let message = if r.job_id == 0 {
                format!("worker {id} deleted")
            } else {
                format!("worker {id} is being deleted by job {}", r.job_id)
            };
            output::done(
                format,
                &message,
                serde_json::json!({ "worker_id": id, "job_id": r.job_id }),
            )
        }
        WorkersCmd::Update(a) => {
            rpc(client
                .update_worker(pb::WorkerUpdateRequest {
                    worker_id: a.id,
                    provider_id: None,
                    flavor_id: a.flavor,
                    region_id: a.region,
                    concurrency: a.concurrency,
                    prefetch: a.prefetch,
                    step_id: a.step,
                    is_permanent: a.permanent,
                    recyclable_scope: a.recyclable_scope,
                })
                .await)?;
            output::done(
                format,
                &format!("worker {} updated", a.id),
                serde_json::json!({ "worker_id": a.id }),
            )
        }
        WorkersCmd::Status { ids, set } => {
            if let Some(status) = set {
                for id in &ids {
                    rpc(client
                        .update_worker_status(pb::WorkerStatus {
                            worker_id: *id,
                            status: status.clone(),
                        })
                        .await)?;
                }
            }
            let r = rpc(client
                .get_worker_statuses(pb::WorkerStatusRequest { worker_ids: ids })
                .await)?;
            output::print(format, &r.statuses, || {
                let mut t = output::table(&["ID", "STATUS"]);
                for s in &r.statuses {
                    t.add_row(vec![s.worker_id.to_string(), s.status.clone()]);
                }
                t
            })
        }
        WorkersCmd::Stats { ids } => {
            let r = rpc(client
                .get_worker_stats(pb::GetWorkerStatsRequest { worker_ids: ids })
                .await)?;
            let stats: std::collections::BTreeMap<_, _> = r.worker_stats.into_iter().collect();
            output::print(format, &stats, || {
                let mut t = output::table(&[
                    "ID",
                    "CPU%",
                    "MEM%",
                    "LOAD",
                    "IOWAIT%",
                    "DISK R/W B/s",
                    "NET RX/TX B/s",
                    "DISKS",
                ]);
                for (id, s) in &stats {
                    let disk = s.disk_io.unwrap_or_default();
                    let net = s.net_io.unwrap_or_default();
                    t.add_row(vec![
                        id.to_string(),
                        format!("{:.1}", s.cpu_usage_percent),
                        format!("{:.1}", s.mem_usage_percent),
                        format!("{:.2}", s.load_1min),
                        format!("{:.1}", s.iowait_percent),
                        format!("{:.0}/{:.0}", disk.read_bytes_rate, disk.write_bytes_rate),
                        format!("{:.0}/{:.0}", net.recv_bytes_rate, net.sent_bytes_rate),
                        s.disks
                            .iter()
                            .map(|d| format!("{} {:.0}%", d.device_name, d.usage_percent))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ]);
                }
                t
            })
        }
    }
}
