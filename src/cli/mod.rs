//! Client commands for people: `login`, `logout`, `task`, `workers`, `workflow`, `step`, `flavor`,
//! `provider`, `region`, `recruiter`, `event`, `user`, `job`, `template`. Each connects with
//! `--server` / `--token` (or their `TASKQUEUE_*` variables, or the stored login), prints a human
//! table or `--output json`, and fails with one clear line and a non-zero exit code.
//!
//! Naming: `taskqueue worker` runs the worker agent on this machine; `taskqueue workers …` (plural)
//! manages the workers known to the server.

pub mod admin;
pub mod catalog;
pub mod output;
pub mod tasks;
pub mod workers;
pub mod workflows;

use clap::{Args, Subcommand};

use output::{Format, rpc};

use crate::client::connect::{ConnectArgs, StoredLogin};
use crate::proto as pb;

/// Flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

macro_rules! noun {
    ($name:ident, $cmd:ty) => {
        #[derive(Debug, Args)]
        pub struct $name {
            #[command(flatten)]
            pub common: Common,
            #[command(subcommand)]
            pub cmd: $cmd,
        }
    };
}

noun!(TaskArgs, tasks::TaskCmd);
noun!(WorkersArgs, workers::WorkersCmd);
noun!(WorkflowArgs, workflows::WorkflowCmd);
noun!(StepArgs, workflows::StepCmd);
noun!(FlavorArgs, catalog::FlavorCmd);
noun!(ListArgs, catalog::ListOnly);
noun!(RecruiterArgs, catalog::RecruiterCmd);
noun!(EventArgs, admin::EventCmd);
noun!(UserArgs, admin::UserCmd);
noun!(JobArgs, admin::JobCmd);
noun!(TemplateArgs, admin::TemplateCmd);

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub common: Common,
    /// User name.
    #[arg(long, short = 'u', env = "TASKQUEUE_USER", default_value = "admin")]
    pub user: String,
    /// Password [default: asked on the terminal, or read from standard input].
    #[arg(long, env = "TASKQUEUE_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// The client commands (flattened into the binary's subcommands).
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Log in to a server: stores its address and a session token for the next commands
    /// ($XDG_CONFIG_HOME/taskqueue/login.yaml, readable by you only).
    Login(LoginArgs),
    /// End the stored session and forget it.
    Logout(Common),
    /// Tasks: submit, list, show, logs, retry, wait.
    Task(TaskArgs),
    /// Workers known to the server: list, create, delete, update, status, stats
    /// (`taskqueue worker` runs a worker).
    Workers(WorkersArgs),
    /// Workflows: create, list, delete, stats, watch.
    Workflow(WorkflowArgs),
    /// Steps of workflows: create, list, delete, stats.
    Step(StepArgs),
    /// Flavors (machine types): list, create.
    Flavor(FlavorArgs),
    /// Cloud providers: list.
    Provider(ListArgs),
    /// Regions of the providers: list.
    Region(ListArgs),
    /// Recruiters (automatic worker deployment per step): list, create, update, delete.
    Recruiter(RecruiterArgs),
    /// Worker events (diagnostics sent by workers): list, delete, prune.
    Event(EventArgs),
    /// Users: list, create, delete, update, passwd.
    User(UserArgs),
    /// Provider jobs (worker deployments and deletions): list, status, delete.
    Job(JobArgs),
    /// Workflow templates: upload, run, list, runs, delete-run.
    Template(TemplateArgs),
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{wide_bar}] {pos}/{len} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// Runs a client command.
pub async fn run(cmd: ClientCommand) -> anyhow::Result<()> {
    macro_rules! with_client {
        ($args:expr, $f:expr) => {{
            let args = $args;
            let mut client = args.common.connect.resolve()?.client()?;
            $f(args.cmd, &mut client, args.common.output).await
        }};
    }
    match cmd {
        ClientCommand::Login(a) => login(a).await,
        ClientCommand::Logout(c) => logout(c).await,
        ClientCommand::Task(a) => with_client!(a, tasks::run),
        ClientCommand::Workers(a) => with_client!(a, workers::run),
        ClientCommand::Workflow(a) => with_client!(a, workflows::run_workflow),
        ClientCommand::Step(a) => with_client!(a, workflows::run_step),
        ClientCommand::Flavor(a) => with_client!(a, catalog::run_flavor),
        ClientCommand::Provider(a) => {
            let mut client = a.common.connect.resolve()?.client()?;
            catalog::run_provider(&mut client, a.common.output).await
        }
        ClientCommand::Region(a) => {
            let mut client = a.common.connect.resolve()?.client()?;
            catalog::run_region(&mut client, a.common.output).await
        }
        ClientCommand::Recruiter(a) => with_client!(a, catalog::run_recruiter),
        ClientCommand::Event(a) => with_client!(a, admin::run_event),
        ClientCommand::User(a) => with_client!(a, admin::run_user),
        ClientCommand::Job(a) => with_client!(a, admin::run_job),
        ClientCommand::Template(a) => with_client!(a, admin::run_template),
    }
}

async fn login(a: LoginArgs) -> anyhow::Result<()> {
    let mut resolved = a.common.connect.resolve()?;
    resolved.token = None;
    let password = match a.password {
        Some(p) => p,
        None => read_password(&format!(
            "password of {} on {}: ",
            a.user, resolved.target.server
        ))?,
    };
    let mut client = resolved.client()?;
    let token = rpc(client
        .login(pb::LoginRequest {
            username: a.user.clone(),
            password,
        })
        .await)?
    .token;
    let stored = StoredLogin {
        server: resolved.target.server.clone(),
        token,
        username: a.user.clone(),
        // Absolute, so that the stored login works from any folder (`--ca-file taskqueue-data/…`).
        ca_file: resolved
            .target
            .ca_file
            .as_ref()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone())),
        insecure: resolved.target.insecure,
    };
    let path = stored.save()?;
    output::done(
        a.common.output,
        &format!(
            "logged in to {} as {} (session stored in {})",
            stored.server,
            a.user,
            path.display()
        ),
        serde_json::json!({ "server": stored.server, "user": a.user, "file": path }),
    )
}

async fn logout(c: Common) -> anyhow::Result<()> {
    let resolved = c.connect.resolve()?;
    if let Some(token) = resolved.token.clone() {
        let mut client = resolved.client()?;
        // Ending the session on the server is best effort: the local copy goes anyway.
        if let Err(e) = client.logout(pb::Token { token }).await {
            eprintln!(
                "taskqueue: the server did not end the session: {}",
                output::describe_status(&e)
            );
        }
    }
    let removed = StoredLogin::remove()?;
    output::done(
        c.output,
        if removed {
            "logged out"
        } else {
            "no stored login"
        },
        serde_json::json!({ "removed": removed }),
    )
}

/// Reads a password without echo from the terminal, or a line from standard input.
fn read_password(prompt: &str) -> anyhow::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    if tty {
        eprint!("{prompt}");
        std::io::stderr().flush()?;
    }
    // SAFETY: termios calls on fd 0 with a struct we own; echo is restored below.
    let saved = tty.then(|| unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(0, &mut t);
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(0, libc::TCSANOW, &t);
        saved
    });
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        // SAFETY: restores the terminal settings read above.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        eprintln!();
    }
    read?;
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        anyhow::bail!("no password given (use --password, TASKQUEUE_PASSWORD or standard input)");
    }
    Ok(password)
}
