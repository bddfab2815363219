//! `pairbus-broker`: the main job (`serve`), and its offline tools (`init`, `verify`, `export`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use pairbus_broker::bus::{Bus, BusSettings};
use pairbus_broker::config::{resolve, FileConfig, DEFAULT_DATA_DIR, DEFAULT_OPERATOR_LISTEN};
use pairbus_broker::datadir;
use pairbus_broker::export::{export, Format};
use pairbus_broker::ingest::IngestSettings;
use pairbus_broker::log::{LogConfig, LogStore, SledLog};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "pairbus-broker",
    version,
    about = "pairbus broker: embedded MQTT, verified ingest, hash-chained event log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a data folder: a fresh fleet root secret (fleet.key, 0600) and the first
    /// operator (operator-admin.toml) and factory (factory-default.toml) identities.
    Init {
        /// The data folder.
        #[arg(long, env = "PAIRBUS_DATA", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// The operator plane address written into the identities.
        #[arg(long, default_value = DEFAULT_OPERATOR_LISTEN)]
        operator_addr: String,
    },
    /// Run the broker: device plane, operator plane, verified ingest, event log, HTTP API.
    /// Initializes the data folder first if it has no fleet.key.
    Serve {
        /// TOML config file (keys: data, device_listen, operator_listen, http_listen).
        #[arg(long, env = "PAIRBUS_CONFIG")]
        config: Option<PathBuf>,
        /// The data folder [default: ./pairbus-data].
        #[arg(long, env = "PAIRBUS_DATA")]
        data: Option<PathBuf>,
        /// Device plane listener [default: 127.0.0.1:1883].
        #[arg(long, env = "PAIRBUS_DEVICE_LISTEN")]
        device_listen: Option<SocketAddr>,
        /// Operator plane listener [default: 127.0.0.1:1884].
        #[arg(long, env = "PAIRBUS_OPERATOR_LISTEN")]
        operator_listen: Option<SocketAddr>,
        /// HTTP API listener [default: 127.0.0.1:8080].
        #[arg(long, env = "PAIRBUS_HTTP_LISTEN")]
        http_listen: Option<SocketAddr>,
    },
    /// Re-check the whole log offline: every hash link, every MAC, every checkpoint.
    /// (The broker must not be running on the same folder: sled allows one process.)
    Verify {
        /// The data folder.
        #[arg(long, env = "PAIRBUS_DATA", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
    },
    /// Write the log to a file (or stdout) for offline investigation.
    Export {
        /// The data folder.
        #[arg(long, env = "PAIRBUS_DATA", default_value = DEFAULT_DATA_DIR)]
        data: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "cbor-seq")]
        format: ExportFormat,
        /// Output file (default: stdout).
        #[arg(long)]
        out: Option<PathBuf>,
        /// First seq to export.
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// RFC 8742 CBOR sequence of log records.
    CborSeq,
    /// JSON lines, byte fields in hex.
    Jsonl,
}

fn main() -> Result<()> {
    use tracing_subscriber::filter::FilterExt;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let levels = tracing_subscriber::EnvFilter::try_from_env("PAIRBUS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=warn"));
    // rumqttd opens ERROR-level spans around every packet it routes (`publish`,
    // `incoming_payload`), which pass any level filter: formatting their fields took about a
    // fifth of the router thread under load (BENCHMARKS.md, "Broker under MQTT load"). Its
    // spans are left out; its events are still logged.
    let no_rumqttd_spans = tracing_subscriber::filter::filter_fn(|meta| {
        !(meta.is_span() && meta.target().starts_with("rumqttd"))
    });
    // Both as the one layer's filter, so that the disabled spans are never even created.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(levels.and(no_rumqttd_spans)),
        )
        .init();
    match Cli::parse().command {
        Command::Init {
            data,
            operator_addr,
        } => {
            let made = datadir::init(&data, &operator_addr)
                .with_context(|| format!("initializing {}", data.display()))?;
            println!("created {}", made.fleet_key.display());
            println!("created {}", made.operator.display());
            println!("created {}", made.factory.display());
            Ok(())
        }
        Command::Serve {
            config,
            data,
            device_listen,
            operator_listen,
            http_listen,
        } => {
            let file = match &config {
                Some(p) => FileConfig::parse(
                    &std::fs::read_to_string(p)
                        .with_context(|| format!("reading {}", p.display()))?,
                )
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
                None => FileConfig::default(),
            };
            let cfg = resolve(
                FileConfig {
                    data,
                    device_listen,
                    operator_listen,
                    http_listen,
                },
                file,
            );
            serve(cfg)
        }
        Command::Verify { data } => verify(&data),
        Command::Export {
            data,
            format,
            out,
            from,
        } => {
            let log = open_log(&data)?;
            let format = match format {
                ExportFormat::CborSeq => Format::CborSeq,
                ExportFormat::Jsonl => Format::Jsonl,
            };
            let n = match &out {
                Some(p) => {
                    let f = std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?;
                    let mut w = std::io::BufWriter::new(f);
                    export(&log, from, format, &mut w)?
                }
                None => export(
                    &log,
                    from,
                    format,
                    &mut std::io::BufWriter::new(std::io::stdout().lock()),
                )?,
            };
            eprintln!("exported {n} records");
            Ok(())
        }
    }
}

fn open_log(data: &Path) -> Result<SledLog> {
    let root = datadir::load_root(data).with_context(|| {
        format!(
            "no usable fleet key in {} (run `pairbus-broker init`)",
            data.display()
        )
    })?;
    SledLog::open(LogConfig::new(data.join("log")), root).with_context(|| {
        format!(
            "opening the log in {} (is a broker running on it?)",
            data.display()
        )
    })
}

fn verify(data: &Path) -> Result<()> {
    let log = open_log(data)?;
    let report = log.verify().context("reading the log")?;
    println!(
        "checked {} records and {} checkpoints; head seq {} hash {}",
        report.records,
        report.checkpoints,
        report.head.seq,
        hex::encode(report.head.hash)
    );
    match report.first_bad {
        None => {
            println!("OK: the chain, every MAC and every checkpoint verify");
            Ok(())
        }
        Some(bad) => bail!("FAILED at seq {}: {}", bad.seq, bad.problem),
    }
}

fn serve(cfg: pairbus_broker::config::ServeConfig) -> Result<()> {
    let fresh = !cfg.data.join(datadir::FLEET_KEY).exists();
    if fresh {
        let made = datadir::init(&cfg.data, &cfg.operator_listen.to_string())
            .with_context(|| format!("initializing {}", cfg.data.display()))?;
        tracing::info!(
            fleet_key = %made.fleet_key.display(),
            operator = %made.operator.display(),
            factory = %made.factory.display(),
            "initialized a new data folder"
        );
    }
    let root = datadir::load_root(&cfg.data)?;
    let bus = Bus::start(
        BusSettings {
            data_dir: cfg.data.clone(),
            device_listen: cfg.device_listen,
            operator_listen: cfg.operator_listen,
            http_listen: cfg.http_listen,
            ingest: IngestSettings::default(),
        },
        root,
    )
    .context("starting the broker")?;
    if fresh && cfg.operator_listen.port() == 0 {
        // The identities were written before the OS chose the port: point them at it.
        datadir::point_identities(&cfg.data, &bus.operator_addr().to_string())
            .context("updating the first identities with the operator plane's port")?;
    }
    println!(
        "pairbus broker ready: device plane {}, operator plane {}, HTTP http://{}, data {}",
        bus.device_addr(),
        bus.operator_addr(),
        bus.http_addr(),
        cfg.data.display()
    );
    wait_for_signal()?;
    tracing::info!("shutting down");
    bus.shutdown();
    Ok(())
}

fn wait_for_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("signal runtime")?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })
    .context("waiting for a signal")
}
