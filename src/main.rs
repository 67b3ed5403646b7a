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
    /// Show peak shaving on this machine: a slow backend and a burst of
    /// writes, first without and then with sluice in front (under a minute).
    Demo {
        /// Requests in the burst.
        #[arg(long, default_value_t = 600)]
        requests: usize,
    },
    /// Inspect a spool offline (safe while sluice runs).
    #[command(subcommand)]
    Spool(SpoolCommand),
}

#[derive(Subcommand)]
enum SpoolCommand {
    /// Dead letters, offline (refused while a running sluice holds the spool;
    /// use the admin API then).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Per partition first/next/committed offset, backlog, oldest age; DLQ size.
    /// `--spool-dir` reads a local spool offline; `-c FILE` reads the spool
    /// the config names (a JetStream spool from its servers).
    Status {
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        spool_dir: Option<PathBuf>,
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters.
    List {
        #[arg(long)]
        spool_dir: PathBuf,
        /// Start at this DLQ offset.
        #[arg(long, default_value_t = 0)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Re-enqueue dead letters at the tail of their partitions.
    Replay(DlqSelect),
    /// Drop dead letters.
    Purge(DlqSelect),
}

#[derive(clap::Args)]
struct DlqSelect {
    #[arg(long)]
    spool_dir: PathBuf,
    /// Every dead letter.
    #[arg(long, conflicts_with = "id")]
    all: bool,
    /// A request id (Sluice-Id); repeatable.
    #[arg(long, required_unless_present_any = ["all", "route", "reason", "since", "until"])]
    id: Vec<String>,
    /// Only letters of this route (filters combine; not with --id).
    #[arg(long, conflicts_with = "id")]
    route: Option<String>,
    /// Only letters dead for this reason: max_attempts, rejected, expired, corrupt.
    #[arg(long, conflicts_with = "id")]
    reason: Option<String>,
    /// Only letters that died at or after this RFC 3339 time.
    #[arg(long, conflicts_with = "id")]
    since: Option<String>,
    /// Only letters that died before this RFC 3339 time.
    #[arg(long, conflicts_with = "id")]
    until: Option<String>,
}

impl DlqSelect {
    fn selection(&self) -> sluice::drain::dlq::Selection {
        sluice::drain::dlq::Selection {
            all: self.all,
            ids: self.id.clone(),
            route: self.route.clone(),
            reason: self.reason.clone(),
            since: self.since.clone(),
            until: self.until.clone(),
            ..Default::default()
        }
    }
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
    /// Log format; overrides `log.format` (default text).
    #[arg(long, value_enum)]
    log_format: Option<LogFormat>,
}

fn config_exit(e: &ConfigError) -> ExitCode {
    eprintln!("sluice: {e}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // Ages are measured from here: wall clock now + monotonic time since.
    sluice::clock::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(Some(&config), &Overrides::default()) {
            Ok(c) => {
                println!("{}: ok", config.display());
                print!("{}", c.describe());
                for w in c.spool_fit_warnings() {
                    eprintln!("warning: {w}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => config_exit(&e),
        },
        Command::Spool(SpoolCommand::Status {
            spool_dir,
            config,
            json,
        }) => match spool_status(spool_dir, config) {
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
        Command::Demo { requests } => {
            let opts = sluice::demo::DemoOptions {
                requests,
                ..Default::default()
            };
            match offline(async move {
                let summary = sluice::demo::run(opts).await?;
                print!("{summary}");
                Ok(())
            }) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e:#}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Spool(SpoolCommand::Dlq(cmd)) => match offline(dlq_command(cmd)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e:#}");
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
                log_format: args.log_format.map(|f| match f {
                    LogFormat::Text => config::LogFormat::Text,
                    LogFormat::Json => config::LogFormat::Json,
                }),
            };
            let cfg = match Config::load(args.config.as_deref(), &overrides) {
                Ok(c) => c,
                Err(e) => return config_exit(&e),
            };
            telemetry::init(match cfg.log.format {
                config::LogFormat::Text => LogFormat::Text,
                config::LogFormat::Json => LogFormat::Json,
            });
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
    // The main thread runs one worker (plus the admin port, the drainer
    // and the spool's async side) on a current-thread runtime; the app
    // starts one more thread per extra worker (`server.workers`).
    let mut builder = tokio::runtime::Builder::new_current_thread();
    let rt = builder.enable_all().build().context("starting the tokio runtime")?;
    rt.block_on(sluice::app::run(cfg, overrides)).context("sluice stopped")
}

fn offline<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(f)
}

/// Opens an existing spool for offline work, with its own partition count.
async fn open_offline(dir: &std::path::Path) -> anyhow::Result<std::sync::Arc<sluice::spool::Spool>> {
    let status = sluice::spool::inspect(dir)?;
    let mut opts = sluice::spool::SpoolOptions::new(dir);
    opts.partitions = status.partitions.len() as u32;
    match sluice::spool::Spool::open(opts, std::sync::Arc::new(sluice::spool::NoopObserver)).await {
        Ok(s) => Ok(s),
        Err(sluice::spool::SpoolError::Locked { path }) => anyhow::bail!(
            "{} is held by a running sluice; refusing to change it offline (use the admin API: /admin/dlq)",
            path.display()
        ),
        Err(e) => Err(e.into()),
    }
}

/// The status of a local spool directory, or of the spool a config file
/// names (connecting to JetStream for that backend).
fn spool_status(dir: Option<PathBuf>, config: Option<PathBuf>) -> anyhow::Result<sluice::spool::SpoolStatus> {
    if let Some(dir) = dir {
        return Ok(sluice::spool::inspect(&dir)?);
    }
    let path = config.expect("clap requires --spool-dir or --config");
    let config = Config::load(Some(&path), &Overrides::default())?;
    if config.spool.backend.jetstream().is_none() {
        return Ok(sluice::spool::inspect(&config.spool.dir)?);
    }
    offline(async move { Ok(sluice::jetstream::inspect(&config).await?) })
}

async fn dlq_command(cmd: DlqCommand) -> anyhow::Result<()> {
    use sluice::drain::dlq;
    match cmd {
        DlqCommand::List {
            spool_dir,
            from,
            limit,
            json,
        } => {
            let spool = open_offline(&spool_dir).await?;
            let (items, next) = dlq::list(
                &dlq::LocalDeadLetters {
                    spool: &spool,
                    outcomes: None,
                },
                from,
                limit,
            )
            .await?;
            if json {
                println!("{}", serde_json::json!({"dead_letters": items, "next_from": next}));
            } else {
                println!(
                    "{:>8}  {:>4}  {:>10}  {:<12} {:>6}  {:<8} path / id",
                    "dlq", "part", "offset", "reason", "status", "method"
                );
                for d in &items {
                    println!(
                        "{:>8}  {:>4}  {:>10}  {:<12} {:>6}  {:<8} {} {}",
                        d.dlq_offset,
                        d.partition,
                        d.offset,
                        d.reason,
                        d.last_status.map_or("-".to_string(), |s| s.to_string()),
                        d.method.as_deref().unwrap_or("-"),
                        d.path.as_deref().unwrap_or("-"),
                        d.id.as_deref().unwrap_or("-"),
                    );
                }
                if let Some(n) = next {
                    println!("(more: --from {n})");
                }
            }
            spool.close().await?;
        }
        DlqCommand::Replay(sel) => {
            let spool = open_offline(&sel.spool_dir).await?;
            let outcomes = sluice::drain::outcomes::OutcomeStore::open(
                &sel.spool_dir,
                std::time::Duration::from_secs(24 * 3600),
                100_000,
            )?;
            let mut selection = sel.selection();
            // Offline, the spool directory's lock keeps every other
            // process out; the DLQ lock only has this one operation to order.
            let lock = dlq::DlqLock::default();
            let mut total = 0;
            // A page at a time, as the admin API does, to the end.
            loop {
                let letters = dlq::LocalDeadLetters {
                    spool: &spool,
                    outcomes: Some(&outcomes),
                };
                let page = dlq::replay(&letters, &lock, &selection).await?;
                for (old, new) in &page.pairs {
                    println!("{old} -> {new}");
                }
                total += page.pairs.len();
                match page.next_from {
                    Some(next) => {
                        selection.from = Some(next);
                        selection.before = Some(page.before);
                    }
                    None => break,
                }
            }
            println!("replayed {total}");
            spool.close().await?;
        }
        DlqCommand::Purge(sel) => {
            let spool = open_offline(&sel.spool_dir).await?;
            let selection = sel.selection();
            let letters = dlq::LocalDeadLetters {
                spool: &spool,
                outcomes: None,
            };
            let n = dlq::purge(&letters, &dlq::DlqLock::default(), &selection).await?;
            println!("purged {n}");
            spool.close().await?;
        }
    }
    Ok(())
}
