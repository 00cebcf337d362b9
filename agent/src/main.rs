//! berthd: the berth CRI node agent.
//!
//! `berthd [--config FILE] [--root DIR] [--state DIR] [--socket PATH]
//! [--log-level LEVEL]` serves CRI until SIGTERM or SIGINT and re-reads
//! its configuration on SIGHUP (see `berth_agent::reload`);
//! `berthd doctor` checks the node;
//! `berthd config default` prints the default configuration file,
//! `berthd config dump` the configuration berthd would run with (files,
//! drop-ins and flags, defaults filled in).

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
    #[arg(long, value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Persistent data directory (overrides `root`)
    #[arg(long, value_name = "DIR", global = true)]
    root: Option<PathBuf>,
    /// Volatile state directory (overrides `state`)
    #[arg(long, value_name = "DIR", global = true)]
    state: Option<PathBuf>,
    /// CRI socket path (overrides `grpc.socket`)
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (overrides `log.level` and RUST_LOG)
    #[arg(long, value_name = "LEVEL", global = true, value_parser = clap::builder::PossibleValuesParser::new(LOG_LEVELS))]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the node: kernel, overlayfs, cgroups, namespaces, runtimes, CNI, disk, socket
    Doctor,
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
    /// Print the effective configuration (file, drop-ins, flags; defaults filled in) as TOML
    Dump,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Config {
            command: ConfigCommand::Default,
        }) => {
            print!("{}", berth_agent::config::DEFAULT_CONFIG_TOML);
            Ok(())
        }
        Some(Command::Config {
            command: ConfigCommand::Dump,
        }) => dump_config(&cli),
        Some(Command::Doctor) => return doctor(&cli),
        None => run(cli),
    };
    match result {
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
    let (log_filter, export) = {
        // The span exporter's gRPC channel is made inside the runtime.
        let _runtime = runtime.enter();
        init_logging(&config, cli.log_level.is_some())?
    };
    let served = runtime.block_on(async {
        let shutdown = shutdown_signal()?;
        let reloads = reload_on_hangup(cli, log_filter)?;
        berth_agent::daemon::serve(config, shutdown, reloads).await?;
        Ok(())
    });
    if let Some(export) = export {
        export.shutdown();
    }
    served
}

/// Re-reads the configuration (file and flags, as at start-up) on every
/// SIGHUP, applies its log level and hands it to the daemon. A file that
/// does not load is logged and changes nothing.
fn reload_on_hangup(
    cli: Cli,
    log_filter: LogFilter,
) -> anyhow::Result<tokio::sync::mpsc::UnboundedReceiver<Config>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let (send, receive) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            match load_config(&cli) {
                Ok(config) => {
                    let filter = log_filter_for(&config, cli.log_level.is_some());
                    if let Err(e) = log_filter.reload(filter) {
                        tracing::error!(error = %e, "cannot change the log level");
                    }
                    if send.send(config).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::error!(
                    error = %one_line(&e),
                    "cannot reload the configuration; keeping the running one"
                ),
            }
        }
    });
    Ok(receive)
}

/// The configuration file: `--config` (which must exist) or the default.
fn config_file(cli: &Cli) -> (PathBuf, bool) {
    match &cli.config {
        Some(path) => (path.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    }
}

/// Prints every node check with its fix; fails when one finds a problem.
fn doctor(cli: &Cli) -> ExitCode {
    use berth_agent::doctor::{check_all, Host, Severity};
    let config = match load_config(cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("berthd: {}", one_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let findings = check_all(&Host::real(), &config);
    for finding in &findings {
        println!("{finding}");
    }
    let count = |severity| findings.iter().filter(|f| f.severity == severity).count();
    let (problems, warnings) = (count(Severity::Problem), count(Severity::Warning));
    println!("{problems} problems, {warnings} warnings");
    if problems > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Prints what berthd would run with, and which files it came from.
fn dump_config(cli: &Cli) -> anyhow::Result<()> {
    let config = load_config(cli)?;
    let (path, _) = config_file(cli);
    let mut sources = Vec::new();
    if path.exists() {
        sources.push(path.clone());
    }
    sources.extend(Config::drop_ins(&path)?);
    println!(
        "# berthd {} effective configuration",
        env!("CARGO_PKG_VERSION")
    );
    for source in &sources {
        println!("# from {}", source.display());
    }
    if sources.is_empty() {
        println!("# from defaults only ({} is absent)", path.display());
    }
    println!();
    print!("{}", config.to_toml());
    Ok(())
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let (path, required) = config_file(cli);
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

/// Changes the log filter of the running subscriber.
type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// Installs the log subscriber; its filter can be replaced later (SIGHUP).
/// The filter applies to the log only: the OTLP export, when configured,
/// takes berth's spans whatever the level.
fn init_logging(
    config: &Config,
    level_from_flag: bool,
) -> anyhow::Result<(LogFilter, Option<berth_agent::telemetry::Export>)> {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, Registry};
    let (filter, handle) =
        tracing_subscriber::reload::Layer::new(log_filter_for(config, level_from_flag));
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
    Ok((handle, export))
}

/// `--log-level` wins, then RUST_LOG (which takes per-module directives),
/// then `log.level` from the file.
fn log_filter_for(config: &Config, level_from_flag: bool) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    match std::env::var("RUST_LOG") {
        Ok(directives) if !level_from_flag && !directives.is_empty() => {
            EnvFilter::try_new(&directives).unwrap_or_else(|e| {
                eprintln!("berthd: ignoring RUST_LOG={directives:?}: {e}");
                EnvFilter::new(&config.log.level)
            })
        }
        _ => EnvFilter::new(&config.log.level),
    }
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
