//! berthd: the berth CRI node agent.
//!
//! `berthd [--config FILE] [--root DIR] [--state DIR] [--socket PATH]
//! [--log-level LEVEL]` serves CRI until SIGTERM or SIGINT;
//! `berthd config default` prints the default configuration file.

use anyhow::Context;
use berth_agent::config::{Config, LogFormat, DEFAULT_CONFIG_PATH, LOG_LEVELS};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "berthd",
    version,
    about = "berth: a Kubernetes CRI container runtime"
)]
struct Cli {
    /// Configuration file [default: /etc/berth/config.toml, if present]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Persistent data directory (overrides `root`)
    #[arg(long, value_name = "DIR")]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides `state`)
    #[arg(long, value_name = "DIR")]
    state: Option<PathBuf>,
    /// CRI socket path (overrides `grpc.socket`)
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (overrides `log.level` and RUST_LOG)
    #[arg(long, value_name = "LEVEL", value_parser = clap::builder::PossibleValuesParser::new(LOG_LEVELS))]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Configuration helpers
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the default configuration file, every key with its default
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Config {
        command: ConfigCommand::Default,
    }) = cli.command
    {
        print!("{}", berth_agent::config::DEFAULT_CONFIG_TOML);
        return ExitCode::SUCCESS;
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, naming the problem: start-up errors are read by people.
            eprintln!("berthd: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli)?;
    berth_agent::memory::limit_arenas();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let export = {
        // The span exporter's gRPC channel is made inside the runtime.
        let _runtime = runtime.enter();
        init_logging(&config, cli.log_level.is_some())?
    };
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        berth_agent::daemon::run(config, shutdown).await?;
        Ok(())
    });
    if let Some(export) = export {
        export.shutdown();
    }
    served
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, required) = match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let mut config = Config::load(&path, required)?;
    if let Some(root) = &cli.root {
        config.root = root.clone();
    }
    if let Some(state) = &cli.state {
        config.state = state.clone();
    }
    if let Some(socket) = &cli.socket {
        config.grpc.socket = socket.clone();
    }
    if let Some(level) = &cli.log_level {
        config.log.level = level.clone();
    }
    config.validate()?;
    Ok(config)
}

/// `--log-level` wins, then RUST_LOG (which takes per-module directives),
/// then `log.level` from the file. The level filters the log only: the
/// OTLP export, when configured, takes berth's spans whatever the level.
fn init_logging(
    config: &Config,
    level_from_flag: bool,
) -> anyhow::Result<Option<berth_agent::telemetry::Export>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer, Registry};
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !level_from_flag && !directives.is_empty() => {
            EnvFilter::try_new(&directives).unwrap_or_else(|e| {
                eprintln!("berthd: ignoring RUST_LOG={directives:?}: {e}");
                EnvFilter::new(&config.log.level)
            })
        }
        _ => EnvFilter::new(&config.log.level),
    };
    use std::io::IsTerminal;
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let log = match config.log.format {
        LogFormat::Text => log.with_filter(filter).boxed(),
        LogFormat::Json => log.json().with_filter(filter).boxed(),
    };
    let mut layers: Vec<berth_agent::telemetry::BoxedLayer<Registry>> = vec![log];
    let export = match berth_agent::telemetry::layer(&config.tracing)? {
        Some((layer, export)) => {
            layers.push(layer);
            Some(export)
        }
        None => None,
    };
    tracing_subscriber::registry().with(layers).init();
    Ok(export)
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = interrupt.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}

/// The error and its causes on one line. berth's errors already include
/// their source in their message, so a cause is added only when the text
/// so far does not contain it.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text.replace('\n', " ")
}
