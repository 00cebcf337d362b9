//! `berth-load`: runs pod lifecycles against a CRI runtime and reports
//! throughput, latencies and errors; exits 1 on any error.

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run N pod lifecycles (two containers, an ExecSync and a log read each) at
/// concurrency C against a CRI runtime, with List/Status calls beside them,
/// then remove everything; exit 1 on any error.
#[derive(Debug, Parser)]
#[command(name = "berth-load", version)]
struct Args {
    /// The runtime's CRI socket: unix:///PATH or PATH.
    #[arg(long)]
    endpoint: String,
    /// Image of the containers (needs sh, echo and sleep), e.g. busybox from
    /// the loopback registry.
    #[arg(long)]
    image: String,
    /// Pod lifecycles in all.
    #[arg(long, default_value_t = 300)]
    pods: usize,
    /// Pod lifecycles at once.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// Tasks making List/Status calls back to back while the pods run.
    #[arg(long, default_value_t = 2)]
    hammer: usize,
    /// Directory for the pods' log directories (default: a temporary one,
    /// removed afterwards).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// RuntimeClass handler of the pods.
    #[arg(long, default_value = "")]
    runtime_handler: String,
    /// Deadline of each CRI call, in seconds.
    #[arg(long, default_value_t = 120)]
    rpc_timeout: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let report = berth_loadgen::run(berth_loadgen::Options {
        endpoint: args.endpoint,
        image: args.image,
        pods: args.pods,
        concurrency: args.concurrency,
        hammer: args.hammer,
        log_dir: args.log_dir,
        runtime_handler: args.runtime_handler,
        rpc_timeout: Duration::from_secs(args.rpc_timeout),
    })
    .await?;
    print!("{report}");
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report.to_json()).context("report as JSON")?;
        std::fs::write(path, json + "\n").with_context(|| format!("{}", path.display()))?;
    }
    Ok(if report.errors() == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
