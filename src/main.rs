//! The `sluice` command: clap → config → telemetry → app. Nothing else.

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::config::{self, Config, ConfigError, Overrides};
use sluice::telemetry::{self, LogFormat};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

// Many small, short-lived allocations per request (header maps, buffers):
// mimalloc's thread-local free lists handle them with less overhead than
// glibc's malloc (measured in BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A peak-shaving sidecar: admit what the backend can take, spool the excess, replay it at the backend's pace"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (on the embedded default config without -c).
    Run(Box<RunArgs>),
    /// Validate a config file and print the routes as understood.
    Check {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Inspect a spool offline (safe while sluice runs).
    #[command(subcommand)]
    Spool(SpoolCommand),
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Per partition first/next/committed offset, backlog, oldest age; DLQ size.
    Status {
        #[arg(long)]
        spool_dir: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Config file; without it the embedded default is used (needs --upstream).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Data port address, e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin port address, e.g. 127.0.0.1:9090.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Backend URL, e.g. http://127.0.0.1:3000.
    #[arg(long, value_parser = config::parse_upstream_flag)]
    upstream: Option<http::Uri>,
    /// Spool directory.
    #[arg(long)]
    spool_dir: Option<PathBuf>,
    /// Rate of the route named "default", e.g. 100/s.
    #[arg(long, value_parser = config::units::parse_rate)]
    rate: Option<config::Rate>,
    /// Burst of the route named "default".
    #[arg(long)]
    burst: Option<u32>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

fn config_exit(e: &ConfigError) -> ExitCode {
    eprintln!("sluice: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(Some(&config), &Overrides::default()) {
            Ok(c) => {
                println!("{}: ok", config.display());
                print!("{}", c.describe());
                ExitCode::SUCCESS
            }
            Err(e) => config_exit(&e),
        },
        Command::Spool(SpoolCommand::Status { spool_dir, json }) => match sluice::spool::inspect(&spool_dir) {
            Ok(status) => {
                if json {
                    match serde_json::to_string_pretty(&status) {
                        Ok(s) => println!("{s}"),
                        Err(e) => {
                            eprintln!("sluice: {e}");
                            return ExitCode::from(1);
                        }
                    }
                } else {
                    print!("{status}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: {e}");
                ExitCode::from(1)
            }
        },
        Command::Run(args) => {
            let args = *args;
            let overrides = Overrides {
                listen: args.listen,
                admin_listen: args.admin_listen,
                upstream: args.upstream,
                spool_dir: args.spool_dir,
                rate: args.rate,
                burst: args.burst,
            };
            let cfg = match Config::load(args.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => return config_exit(&e),
            };
            telemetry::init(args.log_format);
            match run(cfg, overrides) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("sluice: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

fn run(cfg: Config, overrides: Overrides) -> anyhow::Result<()> {
    // One worker: a current-thread runtime does the same work without the
    // work-stealing scheduler's cross-thread bookkeeping.
    let mut builder = match cfg.server.workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = builder.enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(sluice::app::run(cfg, overrides)).context("sluice stopped")
}
