//! `taskqueue workflow …` (create, list, delete, stats, watch) and `taskqueue step …` (create,
//! list, delete, stats).

use std::time::Duration;

use clap::Subcommand;

use super::output::{self, Format, rpc};
use crate::client::Client;
use crate::proto as pb;

#[derive(Debug, Subcommand)]
pub enum WorkflowCmd {
    /// Create a workflow; prints its id.
    Create {
        name: String,
        /// B batch, T thread-wise, D debug, Z suspended (stored only).
        #[arg(long)]
        run_strategy: Option<String>,
        /// Most workers the recruiters may attach to its steps.
        #[arg(long)]
        max_workers: Option<i32>,
    },
    /// List workflows, newest first.
    List {
        /// Case-insensitive LIKE pattern on the name, e.g. %rna%.
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i32,
        #[arg(long)]
        offset: Option<i32>,
    },
    /// Delete a workflow with its steps and tasks.
    Delete { id: i32 },
    /// Task counts and timings of each step of a workflow.
    Stats { id: i32 },
    /// Follow a workflow with a progress bar until every task is finished; exits non-zero if
    /// some ended failed.
    Watch {
        id: i32,
        /// Time between two refreshes.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
        interval: Duration,
        /// Give up after this long (exit non-zero).
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

#[derive(Debug, Subcommand)]
pub enum StepCmd {
    /// Create a step in a workflow; prints its id.
    Create {
        name: String,
        /// Workflow id.
        #[arg(long, required_unless_present = "workflow_name")]
        workflow: Option<i32>,
        /// Workflow name (instead of its id).
        #[arg(long, conflicts_with = "workflow")]
        workflow_name: Option<String>,
    },
    /// List the steps of a workflow.
    List {
        #[arg(long)]
        workflow: i32,
        #[arg(long)]
        limit: Option<i32>,
        #[arg(long)]
        offset: Option<i32>,
    },
    /// Delete a step with its tasks.
    Delete { id: i32 },
    /// Task counts and timings of steps.
    Stats {
        ids: Vec<i32>,
        #[arg(long)]
        workflow: Option<i32>,
    },
}

pub async fn run_workflow(
    cmd: WorkflowCmd,
    client: &mut Client,
    format: Format,
) -> anyhow::Result<()> {
    match cmd {
        WorkflowCmd::Create {
            name,
            run_strategy,
            max_workers,
        } => {
            let r = rpc(client
                .create_workflow(pb::WorkflowRequest {
                    name,
                    run_strategy,
                    maximum_workers: max_workers,
                })
                .await)?;
            print_id(format, "workflow_id", r.workflow_id)
        }
        WorkflowCmd::List {
            name,
            limit,
            offset,
        } => {
            let r = rpc(client
                .list_workflows(pb::WorkflowFilter {
                    name_like: name,
                    limit: Some(limit),
                    offset,
                })
                .await)?;
            output::print(format, &r.workflows, || {
                let mut t = output::table(&["ID", "NAME", "STRATEGY", "MAX WORKERS"]);
                for w in &r.workflows {
                    t.add_row(vec![
                        w.workflow_id.to_string(),
                        w.name.clone(),
                        w.run_strategy.clone(),
                        output::opt(&w.maximum_workers),
                    ]);
                }
                t
            })
        }
        WorkflowCmd::Delete { id } => {
            rpc(client
                .delete_workflow(pb::WorkflowId { workflow_id: id })
                .await)?;
            output::done(
                format,
                &format!("workflow {id} deleted"),
                serde_json::json!({ "workflow_id": id }),
            )
        }
        WorkflowCmd::Stats { id } => stats(client, Some(id), vec![], format).await,
        WorkflowCmd::Watch {
            id,
            interval,
            timeout,
        } => watch(client, id, interval, timeout, format).await,
    }
}

pub async fn run_step(cmd: StepCmd, client: &mut Client, format: Format) -> anyhow::Result<()> {
    match cmd {
        StepCmd::Create {
            name,
            workflow,
            workflow_name,
        } => {
            let r = rpc(client
                .create_step(pb::StepRequest {
                    workflow_name,
                    workflow_id: workflow,
                    name,
                })
                .await)?;
            print_id(format, "step_id", r.step_id)
        }
        StepCmd::List {
            workflow,
            limit,
            offset,
        } => {
            let r = rpc(client
                .list_steps(pb::StepFilter {
                    workflow_id: workflow,
                    limit,
                    offset,
                })
                .await)?;
            output::print(format, &r.steps, || {
                let mut t = output::table(&["ID", "NAME", "WORKFLOW"]);
                for s in &r.steps {
                    t.add_row(vec![
                        s.step_id.to_string(),
                        s.name.clone(),
                        format!("{} ({})", s.workflow_id, s.workflow_name),
                    ]);
                }
                t
            })
        }
        StepCmd::Delete { id } => {
            rpc(client.delete_step(pb::StepId { step_id: id }).await)?;
            output::done(
                format,
                &format!("step {id} deleted"),
                serde_json::json!({ "step_id": id }),
            )
        }
        StepCmd::Stats { ids, workflow } => stats(client, workflow, ids, format).await,
    }
}

fn print_id(format: Format, key: &str, id: i32) -> anyhow::Result<()> {
    match format {
        Format::Json => println!("{}", serde_json::json!({ key: id })),
        Format::Table => println!("{id}"),
    }
    Ok(())
}

fn accum(a: &Option<pb::Accum>) -> String {
    match a {
        Some(a) if a.count > 0 => format!(
            "{} × {:.0}s (min {:.0}s, max {:.0}s)",
            a.count,
            a.sum / a.count as f32,
            a.min,
            a.max
        ),
        _ => "-".into(),
    }
}

async fn stats(
    client: &mut Client,
    workflow: Option<i32>,
    steps: Vec<i32>,
    format: Format,
) -> anyhow::Result<()> {
    let r = rpc(client
        .get_step_stats(pb::StepStatsRequest {
            workflow_id: workflow,
            step_ids: steps,
        })
        .await)?;
    output::print(format, &r.stats, || {
        let mut t = output::table(&[
            "STEP",
            "NAME",
            "TOTAL",
            "WAITING",
            "PENDING",
            "ACCEPTED",
            "RUNNING",
            "UPLOADING",
            "SUCCEEDED",
            "FAILED",
            "RETRIED",
            "RUN (OK)",
            "RUN (FAILED)",
        ]);
        for s in &r.stats {
            t.add_row(vec![
                s.step_id.to_string(),
                s.step_name.clone(),
                s.total_tasks.to_string(),
                s.waiting_tasks.to_string(),
                s.pending_tasks.to_string(),
                s.accepted_tasks.to_string(),
                s.running_tasks.to_string(),
                s.uploading_tasks.to_string(),
                s.successful_tasks.to_string(),
                s.really_failed_tasks.to_string(),
                s.failed_tasks.to_string(),
                accum(&s.success_run),
                accum(&s.failed_run),
            ]);
        }
        t
    })
}

/// Totals over the steps: (total, finished, failed, running).
pub fn progress(stats: &[pb::StepStats]) -> (i32, i32, i32, i32) {
    stats.iter().fold((0, 0, 0, 0), |(t, d, f, r), s| {
        (
            t + s.total_tasks,
            d + s.successful_tasks + s.really_failed_tasks,
            f + s.really_failed_tasks,
            r + s.running_tasks,
        )
    })
}

async fn watch(
    client: &mut Client,
    id: i32,
    interval: Duration,
    timeout: Option<Duration>,
    format: Format,
) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let bar = super::progress_bar(0);
    loop {
        let r = rpc(client
            .get_step_stats(pb::StepStatsRequest {
                workflow_id: Some(id),
                step_ids: vec![],
            })
            .await)?;
        let (total, done, failed, running) = progress(&r.stats);
        bar.set_length(total.max(0) as u64);
        bar.set_position(done.max(0) as u64);
        bar.set_message(format!("{running} running, {failed} failed"));
        if total > 0 && done >= total {
            bar.finish_and_clear();
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&r.stats)?),
                Format::Table => println!(
                    "workflow {id}: {total} task(s) finished, {} succeeded, {failed} failed",
                    total - failed
                ),
            }
            if failed > 0 {
                anyhow::bail!("workflow {id}: {failed} task(s) failed");
            }
            return Ok(());
        }
        if let Some(limit) = timeout
            && started.elapsed() >= limit
        {
            bar.abandon();
            anyhow::bail!("timed out after {limit:?}: {done} of {total} task(s) finished");
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_counts_final_states() {
        let s = |total, ok, failed, running| pb::StepStats {
            total_tasks: total,
            successful_tasks: ok,
            really_failed_tasks: failed,
            running_tasks: running,
            ..Default::default()
        };
        assert_eq!(progress(&[s(10, 4, 1, 2), s(5, 5, 0, 0)]), (15, 10, 1, 2));
        assert_eq!(progress(&[]), (0, 0, 0, 0));
    }
}
