//! `taskqueue task …`: submit, list, show, logs (paged or followed), retry, wait.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::StreamExt as _;

use super::output::{self, Format, rpc};
use crate::client::Client;
use crate::proto as pb;

#[derive(Debug, Subcommand)]
pub enum TaskCmd {
    /// Submit a task: `taskqueue task submit [OPTIONS] -- COMMAND…`.
    Submit(Box<SubmitArgs>),
    /// List tasks, newest first.
    List(ListArgs),
    /// Show one task (following its retries with --latest).
    Show {
        id: i32,
        /// Show the latest retry of this task instead of the task itself.
        #[arg(long)]
        latest: bool,
    },
    /// Print a task's logs: stdout to stdout, stderr to stderr.
    Logs(LogsArgs),
    /// Retry a task now (any status): a new task replaces it; prints the new id.
    Retry {
        id: i32,
        /// Automatic retries the new task gets [default: the task's own, minus one].
        #[arg(long)]
        retry: Option<i32>,
    },
    /// Wait until tasks are finished (following retries), with a progress bar; exits non-zero if
    /// any ended failed.
    Wait(WaitArgs),
}

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The command, run by `<shell> -c` (shell executor, or docker with --shell) or split into
    /// words (docker without --shell).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    /// Step (id) the task belongs to; workers of that step run it.
    #[arg(long)]
    pub step: Option<i32>,
    /// Container image (docker executor; the shell executor ignores it).
    #[arg(long, default_value = "alpine")]
    pub container: String,
    /// Extra `docker run` options, e.g. "--gpus all".
    #[arg(long)]
    pub container_options: Option<String>,
    /// Shell running the command, e.g. bash [shell executor default: sh].
    #[arg(long)]
    pub shell: Option<String>,
    /// Input location, downloaded into input/ (repeatable).
    #[arg(long = "input", short = 'i')]
    pub inputs: Vec<String>,
    /// Resource location, downloaded once per worker into resource/ (repeatable).
    #[arg(long = "resource", short = 'r')]
    pub resources: Vec<String>,
    /// Location where output/ is uploaded (a folder).
    #[arg(long = "output-to", short = 'O')]
    pub output_to: Option<String>,
    /// Automatic retries after a failure.
    #[arg(long)]
    pub retry: Option<i32>,
    /// Run only after this task succeeded (repeatable).
    #[arg(long = "after", visible_alias = "depends-on")]
    pub after: Vec<i32>,
    /// Display name.
    #[arg(long)]
    pub name: Option<String>,
    /// Initial status letter (e.g. I to submit inactive tasks) [default: P, or W with --after].
    #[arg(long)]
    pub status: Option<String>,
    /// Time allowed to download inputs and resources (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub download_timeout: Option<Duration>,
    /// Time allowed to run the command.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub running_timeout: Option<Duration>,
    /// Time allowed to upload outputs.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub upload_timeout: Option<Duration>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks in this status (one letter: P, R, S, F …).
    #[arg(long)]
    pub status: Option<String>,
    #[arg(long)]
    pub worker: Option<i32>,
    #[arg(long)]
    pub step: Option<i32>,
    #[arg(long)]
    pub workflow: Option<i32>,
    /// Only tasks whose command contains this text (case-insensitive).
    #[arg(long)]
    pub command: Option<String>,
    #[arg(long, default_value_t = 100)]
    pub limit: i32,
    #[arg(long)]
    pub offset: Option<i32>,
    /// Include tasks replaced by a retry.
    #[arg(long)]
    pub hidden: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub id: i32,
    /// Follow the logs live until the task ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines of each stream.
    #[arg(long)]
    pub tail: Option<i32>,
    /// Which streams to print.
    #[arg(long, value_enum, default_value_t = Streams::Both)]
    pub stream: Streams,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Streams {
    Stdout,
    Stderr,
    Both,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Task ids (each followed through its retries).
    pub ids: Vec<i32>,
    /// Wait for every task of this workflow instead.
    #[arg(long, conflicts_with_all = ["ids", "step"])]
    pub workflow: Option<i32>,
    /// Wait for every task of this step instead.
    #[arg(long, conflicts_with = "ids")]
    pub step: Option<i32>,
    /// Give up after this long (exit non-zero).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Time between two checks.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub interval: Duration,
}

pub async fn run(cmd: TaskCmd, client: &mut Client, format: Format) -> anyhow::Result<()> {
    match cmd {
        TaskCmd::Submit(a) => submit(*a, client, format).await,
        TaskCmd::List(a) => list(a, client, format).await,
        TaskCmd::Show { id, latest } => show(id, latest, client, format).await,
        TaskCmd::Logs(a) => logs(a, client).await,
        TaskCmd::Retry { id, retry } => {
            let r = rpc(client
                .retry_task(pb::RetryTaskRequest { task_id: id, retry })
                .await)?;
            output::done(
                format,
                &format!("task {id} retried as task {}", r.task_id),
                serde_json::json!({ "task_id": r.task_id, "retried": id }),
            )
        }
        TaskCmd::Wait(a) => wait(a, client, format).await,
    }
}

fn seconds(d: Option<Duration>) -> Option<f32> {
    d.map(|d| d.as_secs_f32())
}

async fn submit(a: SubmitArgs, client: &mut Client, format: Format) -> anyhow::Result<()> {
    let command = a.command.join(" ");
    if command.trim().is_empty() {
        anyhow::bail!("the command is empty");
    }
    let r = rpc(client
        .submit_task(pb::TaskRequest {
            command,
            shell: a.shell,
            container: a.container,
            container_options: a.container_options,
            step_id: a.step,
            input: a.inputs,
            resource: a.resources,
            output: a.output_to,
            retry: a.retry,
            is_final: None,
            uses_cache: None,
            download_timeout: seconds(a.download_timeout),
            running_timeout: seconds(a.running_timeout),
            upload_timeout: seconds(a.upload_timeout),
            status: a.status.unwrap_or_default(),
            dependency: a.after,
            task_name: a.name,
        })
        .await)?;
    match format {
        Format::Json => println!("{}", serde_json::json!({ "task_id": r.task_id })),
        Format::Table => println!("{}", r.task_id),
    }
    Ok(())
}

fn task_rows(tasks: &[pb::Task]) -> comfy_table::Table {
    let mut t = output::table(&[
        "ID", "NAME", "STATUS", "WORKER", "STEP", "RETRIES", "COMMAND",
    ]);
    for task in tasks {
        let mut command = task.command.replace('\n', " ");
        if command.chars().count() > 60 {
            command = command.chars().take(57).collect::<String>() + "...";
        }
        t.add_row(vec![
            task.task_id.to_string(),
            output::opt(&task.task_name),
            format!(
                "{}{}",
                task.status,
                if task.hidden { " (retried)" } else { "" }
            ),
            output::opt(&task.worker_id),
            output::opt(&task.step_id),
            format!("{}/{}", task.retry_count, task.retry.unwrap_or(0)),
            command,
        ]);
    }
    t
}

async fn list(a: ListArgs, client: &mut Client, format: Format) -> anyhow::Result<()> {
    let r = rpc(client
        .list_tasks(pb::ListTasksRequest {
            status_filter: a.status,
            worker_id_filter: a.worker,
            workflow_id_filter: a.workflow,
            step_id_filter: a.step,
            command_filter: a.command,
            limit: Some(a.limit),
            offset: a.offset,
            show_hidden: a.hidden.then_some(true),
        })
        .await)?;
    output::print(format, &r.tasks, || task_rows(&r.tasks))
}

/// Page size when scanning tasks.
const PAGE: i32 = 1000;

/// Every task (hidden ones included) with an id ≥ `min_id`, keyed by id. Tasks come newest first,
/// so the scan stops at the first page going below `min_id`.
pub async fn tasks_from(
    client: &mut Client,
    min_id: i32,
    filter: &pb::ListTasksRequest,
) -> anyhow::Result<BTreeMap<i32, pb::Task>> {
    let mut out = BTreeMap::new();
    let mut offset = 0;
    loop {
        let mut req = filter.clone();
        req.limit = Some(PAGE);
        req.offset = Some(offset);
        let page = rpc(client.list_tasks(req).await)?.tasks;
        let n = page.len() as i32;
        let lowest = page.iter().map(|t| t.task_id).min();
        for t in page {
            if t.task_id >= min_id {
                out.insert(t.task_id, t);
            }
        }
        if n < PAGE || lowest.is_some_and(|l| l < min_id) {
            return Ok(out);
        }
        offset += n;
    }
}

fn all_hidden() -> pb::ListTasksRequest {
    pb::ListTasksRequest {
        show_hidden: Some(true),
        ..Default::default()
    }
}

/// The last task of `id`'s retry lineage.
fn latest(id: i32, tasks: &BTreeMap<i32, pb::Task>, children: &HashMap<i32, i32>) -> i32 {
    let mut current = id;
    let mut hops = 0;
    while let Some(&next) = children.get(&current) {
        current = next;
        hops += 1;
        if hops > tasks.len() {
            break; // a cycle would be a server bug; never loop forever
        }
    }
    current
}

fn lineage(tasks: &BTreeMap<i32, pb::Task>) -> HashMap<i32, i32> {
    tasks
        .values()
        .filter_map(|t| t.previous_task_id.map(|p| (p, t.task_id)))
        .collect()
}

async fn show(id: i32, follow: bool, client: &mut Client, format: Format) -> anyhow::Result<()> {
    let tasks = tasks_from(client, id, &all_hidden()).await?;
    let id = if follow {
        latest(id, &tasks, &lineage(&tasks))
    } else {
        id
    };
    let task = tasks
        .get(&id)
        .ok_or_else(|| anyhow::anyhow!("not found: there is no task {id}"))?;
    output::print(format, task, || {
        let t = task;
        output::details(vec![
            ("id", t.task_id.to_string()),
            ("name", output::opt(&t.task_name)),
            (
                "status",
                format!(
                    "{}{}",
                    t.status,
                    if t.hidden { " (hidden: retried)" } else { "" }
                ),
            ),
            ("command", t.command.clone()),
            ("shell", output::opt(&t.shell)),
            ("container", t.container.clone()),
            ("container options", output::opt(&t.container_options)),
            ("worker", output::opt(&t.worker_id)),
            ("step", output::opt(&t.step_id)),
            ("workflow", output::opt(&t.workflow_id)),
            ("inputs", t.input.join(" ")),
            ("resources", t.resource.join(" ")),
            ("output", output::opt(&t.output)),
            ("retries left", output::opt(&t.retry)),
            ("retry count", t.retry_count.to_string()),
            ("retry of", output::opt(&t.previous_task_id)),
            ("weight", output::opt(&t.weight)),
            (
                "started",
                t.run_start_time
                    .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
                    .map(|d| d.to_rfc3339())
                    .unwrap_or_default(),
            ),
        ])
    })
}

async fn logs(a: LogsArgs, client: &mut Client) -> anyhow::Result<()> {
    if a.follow {
        return follow(a.id, a.stream, client).await;
    }
    let log_type = match a.stream {
        Streams::Stdout => Some("stdout".to_string()),
        Streams::Stderr => Some("stderr".to_string()),
        Streams::Both => None,
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let chunk = a.tail.unwrap_or(PAGE).max(1);
    let mut skip = 0;
    loop {
        let r = rpc(client
            .get_logs_chunk(pb::GetLogsRequest {
                task_ids: vec![a.id],
                chunk_size: chunk,
                skip_from_end: Some(skip),
                log_type: log_type.clone(),
            })
            .await)?;
        let c = r.logs.into_iter().next().unwrap_or_default();
        let (no, ne) = (c.stdout.len() as i32, c.stderr.len() as i32);
        out.push(c.stdout);
        err.push(c.stderr);
        if a.tail.is_some() || (no < chunk && ne < chunk) {
            break;
        }
        skip += chunk;
    }
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    for page in out.iter().rev() {
        for line in page {
            writeln!(stdout, "{line}")?;
        }
    }
    let mut stderr = std::io::stderr().lock();
    for page in err.iter().rev() {
        for line in page {
            writeln!(stderr, "{line}")?;
        }
    }
    Ok(())
}

/// Streams both logs live until the server ends them (the task finished).
async fn follow(id: i32, streams: Streams, client: &mut Client) -> anyhow::Result<()> {
    let mut c1 = client.clone();
    let mut c2 = client.clone();
    let out = async move {
        if streams == Streams::Stderr {
            return Ok(());
        }
        let mut s = rpc(c1.stream_task_logs_output(pb::TaskId { task_id: id }).await)?;
        while let Some(line) = s.next().await {
            let line = line.map_err(|e| anyhow::anyhow!(output::describe_status(&e)))?;
            println!("{}", line.log_text);
        }
        anyhow::Ok(())
    };
    let err = async move {
        if streams == Streams::Stdout {
            return Ok(());
        }
        let mut s = rpc(c2.stream_task_logs_err(pb::TaskId { task_id: id }).await)?;
        while let Some(line) = s.next().await {
            let line = line.map_err(|e| anyhow::anyhow!(output::describe_status(&e)))?;
            eprintln!("{}", line.log_text);
        }
        anyhow::Ok(())
    };
    let (a, b) = tokio::join!(out, err);
    a.and(b)
}

/// Finished for good: succeeded, canceled, or failed without a retry replacing it.
pub fn is_done(t: &pb::Task) -> bool {
    matches!(t.status.as_str(), "S" | "X") || (t.status == "F" && !t.hidden)
}

async fn wait(a: WaitArgs, client: &mut Client, format: Format) -> anyhow::Result<()> {
    if a.ids.is_empty() && a.workflow.is_none() && a.step.is_none() {
        anyhow::bail!("give task ids, --workflow or --step");
    }
    let started = Instant::now();
    let bar = super::progress_bar(0);
    loop {
        let current: Vec<pb::Task> = if a.ids.is_empty() {
            let filter = pb::ListTasksRequest {
                workflow_id_filter: a.workflow,
                step_id_filter: a.step,
                ..Default::default()
            };
            tasks_from(client, 0, &filter)
                .await?
                .into_values()
                .collect()
        } else {
            let min = *a.ids.iter().min().expect("non-empty");
            let tasks = tasks_from(client, min, &all_hidden()).await?;
            let children = lineage(&tasks);
            let mut out = Vec::new();
            for id in &a.ids {
                let last = latest(*id, &tasks, &children);
                out.push(
                    tasks
                        .get(&last)
                        .cloned()
                        .ok_or_else(|| anyhow::anyhow!("not found: there is no task {id}"))?,
                );
            }
            out
        };
        let done = current.iter().filter(|t| is_done(t)).count();
        let failed: Vec<i32> = current
            .iter()
            .filter(|t| t.status == "F" && !t.hidden)
            .map(|t| t.task_id)
            .collect();
        let running = current.iter().filter(|t| t.status == "R").count();
        bar.set_length(current.len() as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{running} running, {} failed", failed.len()));
        if done == current.len() {
            bar.finish_and_clear();
            let summary = format!(
                "{} task(s) finished: {} succeeded, {} failed",
                current.len(),
                current.iter().filter(|t| t.status == "S").count(),
                failed.len()
            );
            if format == Format::Json {
                let statuses: BTreeMap<String, &str> = current
                    .iter()
                    .map(|t| (t.task_id.to_string(), t.status.as_str()))
                    .collect();
                println!(
                    "{}",
                    serde_json::json!({ "statuses": statuses, "failed": failed })
                );
            } else {
                println!("{summary}");
            }
            if !failed.is_empty() {
                let ids: Vec<String> = failed.iter().map(ToString::to_string).collect();
                anyhow::bail!("{} task(s) failed: {}", failed.len(), ids.join(", "));
            }
            return Ok(());
        }
        if let Some(limit) = a.timeout
            && started.elapsed() >= limit
        {
            bar.abandon();
            anyhow::bail!(
                "timed out after {limit:?}: {} of {} task(s) finished",
                done,
                current.len()
            );
        }
        tokio::time::sleep(a.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(id: i32, status: &str, hidden: bool, previous: Option<i32>) -> pb::Task {
        pb::Task {
            task_id: id,
            status: status.into(),
            hidden,
            previous_task_id: previous,
            ..Default::default()
        }
    }

    #[test]
    fn follows_retries_to_the_latest_task() {
        let tasks: BTreeMap<i32, pb::Task> = [
            t(1, "F", true, None),
            t(2, "S", false, None),
            t(5, "F", true, Some(1)),
            t(9, "R", false, Some(5)),
        ]
        .into_iter()
        .map(|t| (t.task_id, t))
        .collect();
        let children = lineage(&tasks);
        assert_eq!(latest(1, &tasks, &children), 9);
        assert_eq!(latest(2, &tasks, &children), 2);
        assert!(!is_done(&tasks[&1]), "a retried failure is not the end");
        assert!(is_done(&tasks[&2]));
        assert!(!is_done(&tasks[&9]));
        assert!(is_done(&t(3, "F", false, None)));
    }
}
