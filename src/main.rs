//! The `taskqueue` binary: parse arguments, initialise telemetry, dispatch to a subcommand.

use clap::{CommandFactory as _, Parser, Subcommand};
use taskqueue::cli::ClientCommand;
use taskqueue::config::ServeArgs;
use taskqueue::telemetry::{self, LogFormat};
use taskqueue::worker::WorkerArgs;

/// taskqueue — a multi-replica server for the scitq task queue.
#[derive(Parser)]
#[command(version, about, propagate_version = true)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, env = "TASKQUEUE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server replica (with no flags: private PostgreSQL in ./taskqueue-data, 127.0.0.1:50051).
    Serve(ServeArgs),
    /// Apply the database migrations and exit.
    Migrate(ServeArgs),
    /// Run a worker on this machine: takes tasks from the server and runs them
    /// (`taskqueue workers …` manages the workers known to the server).
    Worker(WorkerArgs),
    #[command(flatten)]
    Client(ClientCommand),
    /// Print a shell completion script (e.g. `taskqueue completions bash > ~/.local/share/bash-completion/completions/taskqueue`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Client(_) | Command::Completions { .. } => "warn",
        _ => "info,tower=warn,h2=warn,hyper=warn,opendal=warn",
    };
    telemetry::init_tracing(cli.log_format, default_filter);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Migrate(args) => migrate(args).await,
            Command::Worker(args) => taskqueue::worker::run(args, shutdown_signal()).await,
            Command::Client(cmd) => taskqueue::cli::run(cmd).await,
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut Cli::command(),
                    "taskqueue",
                    &mut std::io::stdout(),
                );
                Ok(())
            }
        }
    });
    if let Err(e) = &result {
        // One line: the error and its causes.
        eprintln!("taskqueue: {}", format!("{e:#}").replace('\n', " "));
        std::process::exit(1);
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let listeners = taskqueue::server::Listeners::bind(&config).await?;
    taskqueue::server::run(config, listeners, shutdown_signal()).await
}

async fn migrate(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let url = config.database_url.clone().ok_or_else(|| {
        anyhow::anyhow!("migrate needs --database-url (serve migrates its private database itself)")
    })?;
    let db = taskqueue::db::Db::connect(&url, 2)?;
    db.wait_ready(std::time::Duration::from_secs(30)).await?;
    let report = taskqueue::db::migrate::migrate(&db).await?;
    println!(
        "schema version {} (applied now: {:?})",
        report.current, report.applied
    );
    Ok(())
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("install SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("taskqueue: second signal, exiting now");
        std::process::exit(130);
    });
}
